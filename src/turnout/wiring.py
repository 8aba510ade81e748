"""Adapters from the spec: the one module that names a concrete platform or router.

`ROUTERS` and `PLATFORMS` map the spec's `router.kind` and `platform.kind` to adapter
classes, and `build_router` / `build_platform` make one over a state folder; everything
else holds a `Router` or a `Platform` (`turnout.routers.base`, `turnout.platforms.base`).

`analysis` chooses the metric source and the judge a deployment's gates use.
`check` refuses, before anything starts, an unknown kind (listing the known ones) and a
spec that needs a capability its router lacks, at the field that needs it:
`turnout.yaml:14: strategy.match: the router 'x' cannot send chosen users to a revision`.
What a router can do may depend on the rest of `router:` (an adopted HAProxy can do less
than one turnout runs), so a kind answers `capabilities_for` the spec's router choice.
`load_spec` loads a spec file with that check, so every command that acts on a service
gets it. `flag_router` finds the router of a spec (file or folder) for flag pushes.

Adding a platform or a router is one module plus one line here: a class with a
`build(spec, state)` class method (and, for a router, `capabilities_for(choice)`), added to
`PLATFORMS` or `ROUTERS` under the kind the spec names it by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from turnout.analysis.judge import Judge
from turnout.analysis.prometheus import PrometheusSource
from turnout.analysis.promql import QueryTemplate
from turnout.analysis.sequential import ComparingJudge
from turnout.analysis.sources import MetricSource, RouterCounters
from turnout.errors import UserError
from turnout.platforms.base import Platform
from turnout.platforms.local import LocalPlatform
from turnout.platforms.ssh import SshPlatform
from turnout.routers.base import CANNOT, Capability, Router
from turnout.routers.haproxy.kind import HaproxyKind
from turnout.routers.hosted import BuiltinKind
from turnout.spec import BlueGreen, Canary, FeatureToggle, PrometheusMetrics, Spec
from turnout.spec.hosts import SshPlatformSpec
from turnout.spec.routing import RouterChoice
from turnout.specfile import SPEC_NAME
from turnout.specfile import load_spec as _load_spec
from turnout.spectext import FieldPath
from turnout.statedir import StateDir


class RouterKind(Protocol):
    """A router adapter class: what it can do, and how it is made from a spec."""

    def capabilities_for(self, choice: RouterChoice) -> frozenset[Capability]:
        """What the router of `choice` (the spec's `router:`) can do."""
        ...

    def build(self, spec: Spec, state: StateDir) -> Router: ...


class PlatformKind(Protocol):
    """A platform adapter class: how it is made from a spec."""

    def build(self, spec: Spec, state: StateDir) -> Platform: ...


ROUTERS: dict[str, RouterKind] = {
    "builtin": BuiltinKind,
    "haproxy": HaproxyKind,
}
PLATFORMS: dict[str, PlatformKind] = {
    "local": LocalPlatform,
    "ssh": SshPlatform,
}


def needs(spec: Spec) -> list[tuple[FieldPath, Capability]]:
    """The router capabilities the spec asks for, each with the field that asks."""
    found: list[tuple[FieldPath, Capability]] = []
    routing = spec.routing
    if "user_key" in routing.model_fields_set:
        found.append((("routing", "user_key"), Capability.STICKINESS))
    if routing.preview_listen is not None:
        found.append((("routing", "preview_listen"), Capability.PREVIEW))
    if routing.flags:
        found.append((("routing", "flags"), Capability.FLAGS))
    strategy = spec.strategy
    if isinstance(strategy, FeatureToggle) and strategy.evaluated_by == "router":
        found.append((("strategy", "kind"), Capability.FLAGS))
    if isinstance(strategy, Canary | FeatureToggle):  # a toggle keeps its ship's fields
        split = [i for i, step in enumerate(strategy.steps) if step.weight not in (None, 0, 100)]
        if split:  # one place is enough to say why
            found.append((("strategy", "steps", split[0], "weight"), Capability.WEIGHTS))
        if strategy.match:
            found.append((("strategy", "match"), Capability.MATCH))
    if isinstance(strategy, BlueGreen | FeatureToggle) and strategy.tests:
        found.append((("strategy", "tests"), Capability.PREVIEW))
    return found + _latency_needs(spec)


# Gate fields that need answers timed: a p99 limit, and a comparison with the baseline (the
# sequential judge holds the canary to the gate's p99 too, and waits for timed answers).
TIMED_FIELDS = ("max_p99", "max_p99_increase", "max_error_rate_increase")


def _latency_needs(spec: Spec) -> list[tuple[FieldPath, Capability]]:
    """The gates that need the router to time answers: those setting one of `TIMED_FIELDS`,
    unless Prometheus gives the latency (`_prometheus_latency` then checks it can)."""
    if isinstance(spec.metrics, PrometheusMetrics):
        return []
    return [(path, Capability.LATENCY) for path in _timed_gates(spec)]


def _prometheus_latency(spec: Spec) -> list[tuple[FieldPath, str]]:
    """With Prometheus, a gate that needs answers timed needs its `latency` query: without
    one, no answer is ever timed and such a gate would wait for them forever."""
    if not isinstance(spec.metrics, PrometheusMetrics) or spec.metrics.latency is not None:
        return []
    return [(path, "needs answers timed, and `metrics` has no `latency` query: add one "
             "(a histogram by `le`), or leave this out") for path in _timed_gates(spec)]


def _timed_gates(spec: Spec) -> list[FieldPath]:
    """Each gate setting one of `TIMED_FIELDS`, as the path of the first it sets."""
    strategy = spec.strategy
    gates: list[tuple[FieldPath, BaseModel | None]] = [
        (("strategy", name), getattr(strategy, name, None))
        for name in ("gate", "analysis", "preview_analysis")]
    for steps in ("steps", "ramp"):
        gates += [(("strategy", steps, i, "analysis"), getattr(step, "analysis", None))
                  for i, step in enumerate(getattr(strategy, steps, None) or ())]
    found: list[FieldPath] = []
    for path, gate in gates:
        named = [f for f in TIMED_FIELDS if gate is not None and f in gate.model_fields_set
                 and getattr(gate, f) is not None]
        if named:
            found.append((*path, named[0]))
    return found


def check(spec: Spec) -> list[tuple[FieldPath, str]]:
    """Unknown kinds and capabilities the chosen router lacks (a `specfile.SpecCheck`)."""
    problems: list[tuple[FieldPath, str]] = []
    router = ROUTERS.get(spec.router.kind)
    if router is None:
        problems.append((("router", "kind"), _unknown("router", spec.router.kind, ROUTERS)))
    else:
        capabilities = router.capabilities_for(spec.router)
        name = repr(spec.router.kind) + (" (adopted)" if spec.router.adopt is not None else "")
        for path, capability in needs(spec):
            if capability not in capabilities:
                hint = ("; set `strategy.evaluated_by: app` to have the app's SDK evaluate it"
                        if path == ("strategy", "kind") and capability is Capability.FLAGS else "")
                problems.append((path, f"the router {name} cannot {CANNOT[capability]}{hint}"))
    if isinstance(spec.platform, SshPlatformSpec) and spec.instances != spec.platform.fleet_size:
        problems.append((("instances",), (
            f"the ssh platform runs hosts x instances_per_host = {spec.platform.fleet_size} "
            "instances; leave `instances` out or make it that number")))
    if isinstance(spec.platform, SshPlatformSpec) and spec.platform.release is None \
            and spec.run.cwd not in (".", "") and not spec.run.cwd.startswith("/"):
        problems.append((("run", "cwd"), "with the ssh platform and no `platform.release`, "
                         "the folder must be absolute (it is on the hosts)"))
    problems += _router_host(spec)
    problems += _router_adopt(spec)
    problems += _app_flags(spec)
    problems += _prometheus_latency(spec)
    if spec.platform.kind not in PLATFORMS:
        problems.append((("platform", "kind"), _unknown("platform", spec.platform.kind, PLATFORMS)))
    return problems


def _router_host(spec: Spec) -> list[tuple[FieldPath, str]]:
    """`router.host` names one of the ssh platform's hosts, for a router that can go there."""
    host = spec.router.host
    if host is None:
        return []
    if spec.router.kind != "builtin":
        return [(("router", "host"), f"the router {spec.router.kind!r} cannot run on a host")]
    if not isinstance(spec.platform, SshPlatformSpec):
        return [(("router", "host"), "needs `platform: {kind: ssh}`: the router goes on one of its hosts")]
    if host not in spec.platform.hosts:
        return [(("router", "host"), f"{host!r} is not one of platform.hosts "
                 f"({', '.join(spec.platform.hosts)})")]
    return []


def _router_adopt(spec: Spec) -> list[tuple[FieldPath, str]]:
    """`router.adopt` is for an HAProxy, which then keeps its own limits and timeouts."""
    if spec.router.adopt is None:
        return []
    if spec.router.kind != "haproxy":
        return [(("router", "adopt"), f"the router {spec.router.kind!r} cannot adopt a running "
                 "one: only `kind: haproxy` can")]
    return [(("routing", name), "an adopted HAProxy keeps its own configuration's; turnout "
             "changes only the servers of router.adopt.backend")
            for name in ("limits", "timeouts", "buffer_requests", "trust_forwarded")
            if name in spec.routing.model_fields_set]


def _app_flags(spec: Spec) -> list[tuple[FieldPath, str]]:
    """A toggle whose flag the app evaluates is judged on the app's metrics: only they know
    which cohort each request was in, so every query must name `{cohort}`."""
    strategy = spec.strategy
    if not isinstance(strategy, FeatureToggle) or strategy.evaluated_by != "app":
        return []
    metrics = spec.metrics
    if not isinstance(metrics, PrometheusMetrics):
        return [(("strategy", "evaluated_by"), (
            "the app evaluates the flag, so only its metrics know each request's cohort: set "
            "`metrics: {kind: prometheus, ...}` with queries that name {cohort}"))]
    # Those queries cannot be filled for a revision, so no gate may watch the shipped one.
    watching: list[FieldPath] = [("strategy", "preview_analysis")] \
        if strategy.ship == "blue-green" and strategy.preview_analysis is not None else []
    if strategy.ship == "canary":
        watching += [("strategy", "steps", i, "pause" if step.pause is not None else "analysis")
                     for i, step in enumerate(strategy.steps)
                     if step.pause is not None or step.analysis is not None]
    problems: list[tuple[FieldPath, str]] = [
        (path, "judges the shipped revision, but with `evaluated_by: app` the metrics' queries "
         "name {cohort}, which a revision has not: leave it out (the ramp judges the cohorts)")
        for path in watching]
    queries = {"requests": metrics.requests, "errors": metrics.errors, "latency": metrics.latency}
    return problems + [(("metrics", name), "the app evaluates strategy.flag, so this query must tell the "
             "cohorts apart with {cohort} (on or off), e.g. cohort=\"{cohort}\"")
            for name, query in queries.items()
            if query is not None and "cohort" not in QueryTemplate.parse(query).placeholders]


def _unknown(what: str, kind: str, known: Mapping[str, object]) -> str:
    return f"unknown {what} {kind!r}; known: {', '.join(sorted(known))}"


def load_spec(path: Path, overrides: Sequence[str] = ()) -> Spec:
    """The spec file, validated, with `check`'s problems among its own (one SpecError)."""
    return _load_spec(path, overrides, checks=(check,))


def build_router(spec: Spec, state: StateDir) -> Router:
    """The spec's router adapter over `state` (nothing is started)."""
    kind = ROUTERS.get(spec.router.kind)
    if kind is None:
        raise UserError(f"router.kind: {_unknown('router', spec.router.kind, ROUTERS)}")
    return kind.build(spec, state)


def build_platform(spec: Spec, state: StateDir) -> Platform:
    """The spec's platform adapter over `state` (nothing is started)."""
    kind = PLATFORMS.get(spec.platform.kind)
    if kind is None:
        raise UserError(f"platform.kind: {_unknown('platform', spec.platform.kind, PLATFORMS)}")
    return kind.build(spec, state)


def analysis(spec: Spec, router: Router) -> tuple[MetricSource, Judge]:
    """What measures a gate's subjects and what judges them: the router's own counters (or
    the Prometheus queries of `metrics`), and
    fixed thresholds or, where a gate compares the canary with its baseline, sequential tests."""
    metrics = spec.metrics
    if isinstance(metrics, PrometheusMetrics):
        source: MetricSource = PrometheusSource(metrics.url, requests=metrics.requests,
                                                errors=metrics.errors, latency=metrics.latency,
                                                timeout=metrics.timeout)
        return source, ComparingJudge()
    return RouterCounters(router), ComparingJudge()


def flag_router(where: Path) -> Router | None:
    """The router of a spec file, or of the `turnout.yaml` in a folder; None without one.

    Raises SpecError when the spec is invalid.
    """
    spec_path = where / SPEC_NAME if where.is_dir() else where
    if not spec_path.is_file():
        return None
    spec = load_spec(spec_path)
    return build_router(spec, StateDir.for_spec(spec_path))
