"""The wiring: adapters by kind, specs refused for what their router cannot do, nothing else.

Routers registered here, in the test, lack capabilities on purpose: a spec that needs one
is refused at its field (exit 2) before anything is built or started, and a router lacking
an optional capability says so rather than pretending.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from turnout import wiring
from turnout.errors import SpecError
from turnout.flags.push import push_flags
from turnout.platforms.local import LocalPlatform
from turnout.routers.base import Capability, NotSupported
from turnout.routers.builtin import BuiltinRouter
from turnout.routers.haproxy.router import HaproxyRouter
from turnout.service import Session
from turnout.spec import Spec
from turnout.statedir import StateDir
from turnout.testing import FakePlatform, FakeRouter

BASE = """\
service: shop
run:
  command: [app, "{port}"]
"""

NEEDY = BASE + """\
routing:
  flags: [checkout]
strategy:
  kind: canary
  steps: [{weight: 10}, {weight: 100}]
  match: [{header: X-Beta, values: ["1"]}]
router: bare
"""


class BareRouter(FakeRouter):
    """A router that can only send every request to some instance."""

    kind = "bare"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    built: ClassVar[list[FakeRouter]] = []

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> FakeRouter:
        router = cls(running=True)
        cls.built.append(router)
        return router


class FlagRouter(BareRouter):
    """A router that evaluates flags and does nothing else optional."""

    kind = "flagging"
    capabilities = frozenset({Capability.FLAGS})


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(wiring.ROUTERS, "bare", BareRouter)
    monkeypatch.setitem(wiring.ROUTERS, "flagging", FlagRouter)
    monkeypatch.setitem(wiring.ROUTERS, "fake", FakeRouter)
    monkeypatch.setitem(wiring.PLATFORMS, "fake", FakePlatform)
    BareRouter.built = []
    FlagRouter.built = []
    yield


def spec_file(folder: Path, text: str) -> Path:
    path = folder / "turnout.yaml"
    path.write_text(text)
    return path


def refusal(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        wiring.load_spec(path)
    assert caught.value.exit_code == 2
    return [line.replace(str(path), "turnout.yaml") for line in caught.value.problems]


def test_router_and_platform_are_a_kind_or_its_shorthand(tmp_path: Path) -> None:
    default = wiring.load_spec(spec_file(tmp_path, BASE))
    short = wiring.load_spec(spec_file(tmp_path, BASE + "router: builtin\nplatform: local\n"))
    whole = wiring.load_spec(spec_file(tmp_path, BASE + "router: {kind: builtin}\n"
                                                        "platform:\n  kind: local\n"))
    assert default == short == whole
    assert (default.router.kind, default.platform.kind) == ("builtin", "local")
    state = StateDir.beside(tmp_path)
    assert isinstance(wiring.build_router(default, state), BuiltinRouter)
    assert isinstance(wiring.build_platform(default, state), LocalPlatform)
    assert not state.path.exists()  # building starts nothing


def test_an_unknown_kind_is_refused_listing_the_known_ones(tmp_path: Path) -> None:
    path = spec_file(tmp_path, BASE + "router: traefik\nplatform:\n  kind: k8s\n")
    assert refusal(path) == [
        "turnout.yaml:4: router.kind: unknown router 'traefik'; known: bare, builtin, fake, flagging, "
        "haproxy",
        "turnout.yaml:6: platform.kind: unknown platform 'k8s'; known: fake, local, ssh",
    ]


def test_a_spec_needing_what_its_router_lacks_is_refused_at_each_field(tmp_path: Path) -> None:
    assert refusal(spec_file(tmp_path, NEEDY)) == [
        "turnout.yaml:5: routing.flags: the router 'bare' cannot evaluate flags for each request",
        "turnout.yaml:8: strategy.steps.0.weight: the router 'bare' cannot split traffic "
        "between revisions by weight",
        "turnout.yaml:9: strategy.match: the router 'bare' cannot send chosen users to a revision",
    ]
    assert wiring.load_spec(spec_file(tmp_path, NEEDY.replace("router: bare", "router: builtin")))


def test_haproxy_is_a_router_kind_that_refuses_router_side_flags_at_their_field(
    tmp_path: Path,
) -> None:
    spec = wiring.load_spec(spec_file(tmp_path, BASE + "router: haproxy\n"))
    router = wiring.build_router(spec, StateDir.beside(tmp_path))
    assert isinstance(router, HaproxyRouter)
    assert Capability.FLAGS not in router.capabilities
    toggle = BASE + "router: haproxy\nstrategy:\n  kind: feature-toggle\n  flag: checkout\n"
    assert refusal(spec_file(tmp_path, toggle)) == [
        "turnout.yaml:6: strategy.kind: the router 'haproxy' cannot evaluate flags for each "
        "request; set `strategy.evaluated_by: app` to have the app's SDK evaluate it"]


APP_METRICS = ("metrics:\n  kind: prometheus\n  url: http://127.0.0.1:9090\n"
               "  requests: 'sum(app_requests_total{flag=\"{flag}\",cohort=\"{cohort}\"})'\n"
               "  errors: 'sum(app_errors_total{cohort=\"{cohort}\"})'\n")
APP_TOGGLE = BASE + ("router: haproxy\nstrategy:\n  kind: feature-toggle\n  flag: checkout\n"
                     "  evaluated_by: app\n")


def test_a_toggle_the_app_evaluates_needs_no_router_flags_but_its_cohorts_in_prometheus(
    tmp_path: Path,
) -> None:
    spec = wiring.load_spec(spec_file(tmp_path, APP_TOGGLE + APP_METRICS))
    assert spec.router_flags() == []  # the router is told of no flag
    router_side = spec_file(tmp_path, BASE + "strategy:\n  kind: feature-toggle\n  flag: checkout\n"
                            "routing:\n  flags: [banner]\n")
    assert wiring.load_spec(router_side).router_flags() == ["banner", "checkout"]
    assert refusal(spec_file(tmp_path, APP_TOGGLE)) == [
        "turnout.yaml:8: strategy.evaluated_by: the app evaluates the flag, so only its metrics "
        "know each request's cohort: set `metrics: {kind: prometheus, ...}` with queries that "
        "name {cohort}"]
    blind = APP_METRICS.replace('errors_total{cohort="{cohort}"}', 'errors_total{code="500"}')
    assert blind != APP_METRICS
    problems = refusal(spec_file(tmp_path, APP_TOGGLE + blind))
    assert [p.split(": ", 2)[:2] for p in problems] == [["turnout.yaml:13", "metrics.errors"]]
    assert "must tell the cohorts apart with {cohort}" in problems[0]
    canary = APP_TOGGLE + "  ship: canary\n  steps: [{weight: 50}, {pause: 10s}, {weight: 100}]\n"
    problems = refusal(spec_file(tmp_path, canary + APP_METRICS))
    assert [p.split(": ", 2)[1] for p in problems] == ["strategy.steps.1.pause"]
    assert "judges the shipped revision" in problems[0]
    green = APP_TOGGLE + ("  ship: blue-green\n  tests: [{http: /healthz}]\n"
                          "  preview_analysis: {duration: 5s}\n")
    problems = refusal(spec_file(tmp_path, green.replace("router: haproxy", "router: builtin")
                                 + APP_METRICS))
    assert [p.split(": ", 2)[1] for p in problems] == ["strategy.preview_analysis"]


def test_a_gate_needing_timed_answers_is_refused_when_prometheus_has_no_latency_query(
    tmp_path: Path,
) -> None:
    canary = BASE + ("strategy:\n  kind: canary\n  steps: [{weight: 50}, {pause: 1m}]\n"
                     "  gate: {max_error_rate_increase: 1%}\n")
    metrics = ("metrics:\n  kind: prometheus\n  url: http://127.0.0.1:9090\n"
               "  requests: 'sum(r{version=\"{version}\"})'\n  errors: 'sum(e{version=\"{version}\"})'\n")
    assert refusal(spec_file(tmp_path, canary + metrics)) == [
        "turnout.yaml:7: strategy.gate.max_error_rate_increase: needs answers timed, and `metrics` "
        "has no `latency` query: add one (a histogram by `le`), or leave this out"]
    timed = metrics + "  latency: 'sum by (le) (s_bucket{version=\"{version}\"})'\n"
    assert wiring.load_spec(spec_file(tmp_path, canary + timed))
    untimed = canary.replace("max_error_rate_increase: 1%", "max_error_rate: 1%")
    assert wiring.load_spec(spec_file(tmp_path, untimed + metrics))


NEEDS = [
    ("routing:\n  user_key: {header: X-Account}\n", "routing.user_key", Capability.STICKINESS),
    ("routing:\n  preview_listen: 127.0.0.1:9999\n", "routing.preview_listen", Capability.PREVIEW),
    ("strategy:\n  kind: blue-green\n  tests: [{http: /smoke}]\n", "strategy.tests",
     Capability.PREVIEW),
    ("strategy:\n  kind: feature-toggle\n  flag: checkout\n", "strategy.kind", Capability.FLAGS),
    ("strategy:\n  kind: feature-toggle\n  flag: checkout\n  ship: canary\n"
     "  steps: [{weight: 50}, {weight: 100}]\n", "strategy.steps.0.weight", Capability.WEIGHTS),
    ("strategy:\n  kind: canary\n  steps: [{weight: 100}]\n  gate: {max_p99: 200ms}\n",
     "strategy.gate.max_p99", Capability.LATENCY),
]


@pytest.mark.parametrize(("snippet", "field", "capability"), NEEDS,
                         ids=[f"{n[1]}-{n[2]}" for n in NEEDS])
def test_each_need_is_named_when_only_that_capability_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snippet: str, field: str,
    capability: Capability,
) -> None:
    lacking = type("Lacking", (BareRouter,), {"capabilities": frozenset(Capability) - {capability}})
    monkeypatch.setitem(wiring.ROUTERS, "lacking", lacking)
    problems = refusal(spec_file(tmp_path, BASE + snippet + "router: lacking\n"))
    assert [p.split(": ", 2)[1] for p in problems] == [field]
    assert f"the router 'lacking' cannot {wiring.CANNOT[capability]}" in problems[0]
    assert wiring.load_spec(spec_file(tmp_path, BASE + snippet + "router: bare\n".replace(
        "bare", "builtin")))


async def test_a_refused_spec_builds_and_starts_nothing(tmp_path: Path) -> None:
    path = spec_file(tmp_path, NEEDY)
    with pytest.raises(SpecError, match=r"strategy\.match: the router 'bare' cannot"):
        async with Session.open(path):
            pass
    assert BareRouter.built == []
    assert not (tmp_path / ".turnout").exists()


async def test_a_router_lacking_an_optional_capability_says_so() -> None:
    router = BareRouter(running=True)
    assert await router.drained("v1-x-0") is None  # cannot tell: the caller waits its timeout
    with pytest.raises(NotSupported, match="cannot evaluate flags for each request"):
        await router.set_flags({"features": [], "meta": {"revision": 1}}, revision=1)


def flags(revision: int) -> dict[str, object]:
    return {"version": 2, "segments": [], "meta": {"revision": revision},
            "features": [{"name": "checkout", "enabled": True,
                          "strategies": [{"name": "default", "parameters": {}}]}]}


async def test_flag_pushes_go_through_the_router_seam(tmp_path: Path) -> None:
    other = spec_file(tmp_path, BASE + "router: flagging\n").rename(tmp_path / "other.yaml")
    assert await push_flags(other, flags(3))  # a spec file by its own name
    assert [r.flag_revisions for r in FlagRouter.built] == [[3]]
    assert not await push_flags(tmp_path, flags(4))  # no turnout.yaml in the folder
    spec_file(tmp_path, BASE + "router: bare\n")
    assert not await push_flags(tmp_path, flags(5))  # its router does not evaluate flags
    assert [r.flag_pushes for r in BareRouter.built] == [[]]
    assert all(r.closed for r in [*BareRouter.built, *FlagRouter.built])


async def test_a_router_that_is_not_running_gets_no_push(tmp_path: Path) -> None:
    spec_file(tmp_path, BASE + "router: fake\n")  # FakeRouter.build: a router that runs
    assert await push_flags(tmp_path, flags(1))
    spec_file(tmp_path, BASE + "router: builtin\n")  # none started here
    assert not await push_flags(tmp_path, flags(1))


async def test_the_session_drives_adapters_only_through_their_protocols(tmp_path: Path) -> None:
    path = spec_file(tmp_path, BASE + "router: fake\nplatform: fake\n")
    async with Session.open(path) as session:
        assert isinstance(session.router, FakeRouter)
        assert isinstance(session.platform, FakePlatform)
        status = await session.status()
        assert status.router.running is False  # nothing applied yet
        assert (await session.router.describe()).running
        assert await session.down() == 0
        assert not (await session.router.describe()).running
