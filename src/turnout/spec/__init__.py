"""The spec file (`turnout.yaml`): `Spec`, one service and how to deploy it.

The models here are the contract of DESIGN.md's spec; this package is split by the parts of
a spec, each module owning its models and the notations they read:

- `values`: counts and percentages, ratios, the `kind` shorthand, the strict base model;
- `run`: the command, its environment, the health check, the platform;
- `routing`: the router, user keys, limits, timeouts and buffering;
- `steps`: matches, the gate, analyses, canary and ramp steps, blue-green tests;
- `strategy`: the union of the five strategy kinds and which fields each reads.

Every model is importable from `turnout.spec` itself. Loading a file with error messages
that name the file, line and field lives in `turnout.specfile`.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from turnout.addresses import join_host_port, split_host_port
from turnout.spec.hosts import host_address
from turnout.spec.metrics import MetricsField, PrometheusMetrics, RouterMetrics
from turnout.spec.routing import (
    DEFAULT_BUFFER,
    BufferSize,
    RouterChoice,
    RouterField,
    Routing,
    UserKey,
    parse_buffering,
)
from turnout.spec.run import INHERIT_ENV, Health, PlatformChoice, PlatformField, Run
from turnout.spec.steps import (
    Analysis,
    Background,
    CanaryStep,
    CommandTest,
    Gate,
    HttpTest,
    Match,
    PreviewTest,
    RampStep,
)
from turnout.spec.strategy import (
    STRATEGIES,
    BigBang,
    BlueGreen,
    Canary,
    FeatureToggle,
    Rolling,
    ShipKind,
    Strategy,
    fields_read,
    owners,
    parse_strategy,
)
from turnout.spec.values import Count, CountOrPercent, Ratio, Strict, parse_count, parse_ratio

__all__ = [
    "DEFAULT_BUFFER",
    "INHERIT_ENV",
    "STRATEGIES",
    "Analysis",
    "Background",
    "BigBang",
    "BlueGreen",
    "BufferSize",
    "Canary",
    "CanaryStep",
    "CommandTest",
    "Count",
    "CountOrPercent",
    "FeatureToggle",
    "Gate",
    "Health",
    "HttpTest",
    "Match",
    "PlatformChoice",
    "PlatformField",
    "PreviewTest",
    "PrometheusMetrics",
    "RampStep",
    "Ratio",
    "Rolling",
    "RouterChoice",
    "RouterField",
    "RouterMetrics",
    "Routing",
    "Run",
    "ShipKind",
    "Spec",
    "Strategy",
    "UserKey",
    "fields_read",
    "owners",
    "parse_buffering",
    "parse_count",
    "parse_ratio",
    "parse_strategy",
    "split_address",
]


class Spec(Strict):
    """One service and how to deploy it: the contents of turnout.yaml."""

    service: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$",
        description="the service's name: lowercase, digits, . _ -",
    )
    listen: str = Field(
        default="127.0.0.1:8080", description="host:port where users connect: the router"
    )
    instances: int = Field(
        default=1, ge=1, le=256, description="how many copies of each revision run"
    )
    run: Run
    health: Health = Field(default_factory=Health)
    routing: Routing = Field(default_factory=Routing)
    strategy: Strategy = Field(default_factory=Rolling)
    router: RouterField = Field(
        default_factory=RouterChoice, description="the router: `builtin`, or {kind: ...}"
    )
    platform: PlatformField = Field(
        default_factory=PlatformChoice, description="where instances run: `local`, or {kind: ...}"
    )
    metrics: MetricsField = Field(
        default_factory=RouterMetrics,
        description="what gates judge: `router` (its own counters) or {kind: prometheus, ...}",
    )

    @model_validator(mode="before")
    @classmethod
    def _fleet_from_hosts(cls, data: object) -> object:
        """With `platform: {kind: ssh}`, `instances` defaults to hosts x instances_per_host
        (`turnout.wiring.check` refuses a spec that writes a different number)."""
        if not isinstance(data, dict) or "instances" in data:
            return data
        platform = data.get("platform")
        if isinstance(platform, dict) and platform.get("kind") == "ssh":
            hosts, per_host = platform.get("hosts"), platform.get("instances_per_host", 1)
            if isinstance(hosts, list) and hosts and isinstance(per_host, int) and per_host >= 1:
                return {**data, "instances": min(256, len(hosts) * per_host)}
        return data

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    def reachable(self, address: str) -> str:
        """An address the router listens on, as this machine reaches it: with the router
        on a host, a wildcard address (0.0.0.0, ::) is that host's."""
        host, port = split_host_port(address)
        if self.router.host is None or host not in ("0.0.0.0", "::"):
            return address
        return join_host_port(host_address(self.router.host)[0], port)

    def router_flags(self) -> list[str]:
        """The flags the router evaluates for each request: `routing.flags`, and a feature
        toggle's own flag unless the app evaluates it (`strategy.evaluated_by: app`)."""
        names = list(self.routing.flags)
        strategy = self.strategy
        if isinstance(strategy, FeatureToggle) and strategy.evaluated_by == "router":
            names.append(strategy.flag)
        return list(dict.fromkeys(names))

    def preview_listen(self) -> str:
        if self.routing.preview_listen:
            return self.routing.preview_listen
        host, port = split_host_port(self.listen)
        return join_host_port(host, port + 1)


def split_address(value: str) -> tuple[str, int]:
    return split_host_port(value)
