"""The `Router` seam: lifecycle, declared capabilities, tables, counters, drains and flags.

A router is one process (or service) that carries users' requests to instances. Its
adapter is built by `turnout.wiring` from the spec and used only through `Router`:
`ensure_running` / `stop` / `describe` for its life, `apply` / `table` for the routing
table (atomic, in effect on return), `stats` and `drained` for what it saw, `set_flags`
for per-request flag evaluation.

Routers differ in what they can do, so each declares its `capabilities`; the wiring
refuses a spec that needs one the chosen router lacks before anything starts. A method of
an optional capability the router lacks does not pretend, in the manner of argo-rollouts'
`VerifyWeight`: `drained` answers None ("cannot tell": wait the drain timeout) and
`set_flags` raises `NotSupported`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from turnout.errors import RouterError
from turnout.routers.table import RoutingTable

# Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf. About
# 1.5x apart, so a judge sees a shift of tens of milliseconds in the tail.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)
# The bounds turnout used before: counters saved or served with them are read into the
# buckets above (each of these bounds is one of them, so no count moves past its bound).
OLD_LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)


def latency_buckets(counts: list[int]) -> list[int]:
    """A latency histogram in today's buckets: as it is, or moved from the old bounds (each
    old bucket's count into the bucket with the same upper bound). ValueError otherwise."""
    if len(counts) == len(LATENCY_BOUNDS) + 1:
        return counts
    if len(counts) != len(OLD_LATENCY_BOUNDS) + 1:
        raise ValueError(f"a latency histogram has {len(LATENCY_BOUNDS) + 1} buckets, not {len(counts)}")
    moved = [0] * (len(LATENCY_BOUNDS) + 1)
    for bound, count in zip((*OLD_LATENCY_BOUNDS, float("inf")), counts, strict=True):
        moved[len(LATENCY_BOUNDS) if bound == float("inf") else LATENCY_BOUNDS.index(bound)] += count
    return moved


class Counters(BaseModel):
    """Counters for one revision (or cohort); the router keeps them across worker restarts.

    `requests` counts every request routed to the revision. Each failed one counts once:
    in `responses_5xx` when the client got a 5xx status (from the instance, or a 503 from
    the router), else in `connection_errors` (the instance could not be reached or heard
    from: a 502 or 504 the router answered, or a response cut short). A request the router
    retries on another revision after a failed connect is one request and one connection
    error of the revision that failed it, then a request of the one that answers it (a retry
    within the revision counts once, without an error). `router_responses`
    breaks down by status the answers the router made itself (400, 408, 413, 431, 502, 503,
    504), whatever they count as; `latency` holds only answers from instances, each timed to
    its first byte (a streamed answer such as server-sent events is as slow as its start).
    """

    model_config = ConfigDict(extra="forbid")
    requests: int = 0
    responses_5xx: int = 0
    connection_errors: int = 0
    latency: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    router_responses: dict[str, int] = Field(default_factory=dict)
    # Of `requests`, those still waiting for their answer at the reading (a gauge, not a
    # count: a window keeps its later reading's). The metric source fills it from the
    # router's in-flight requests; a source that counts only answered requests leaves 0.
    in_flight: int = 0

    @field_validator("latency")
    @classmethod
    def _today_buckets(cls, value: list[int]) -> list[int]:
        return latency_buckets(value)  # a router still running an older turnout

    def minus(self, earlier: Counters) -> Counters:
        """The traffic between two readings.

        Counters only grow (the router persists them across worker restarts); should any
        have gone down all the same (its state folder was wiped), the later reading is
        taken whole, so a difference is never negative.
        """
        pairs = [(self.requests, earlier.requests), (self.responses_5xx, earlier.responses_5xx),
                 (self.connection_errors, earlier.connection_errors),
                 *zip(self.latency, earlier.latency, strict=True),
                 *((n, earlier.router_responses.get(k, 0)) for k, n in self.router_responses.items())]
        if any(now < before for now, before in pairs) or set(earlier.router_responses) - set(
            self.router_responses
        ):
            return self.model_copy(deep=True)
        return Counters(
            in_flight=min(self.in_flight, self.requests - earlier.requests),
            requests=self.requests - earlier.requests,
            responses_5xx=self.responses_5xx - earlier.responses_5xx,
            connection_errors=self.connection_errors - earlier.connection_errors,
            latency=[a - b for a, b in zip(self.latency, earlier.latency, strict=True)],
            router_responses={k: n - earlier.router_responses.get(k, 0)
                              for k, n in self.router_responses.items()
                              if n - earlier.router_responses.get(k, 0)},
        )

    def plus(self, other: Counters) -> Counters:
        """The traffic of both (two cohorts of one service: the whole service)."""
        statuses = set(self.router_responses) | set(other.router_responses)
        return Counters(
            requests=self.requests + other.requests,
            responses_5xx=self.responses_5xx + other.responses_5xx,
            connection_errors=self.connection_errors + other.connection_errors,
            latency=[a + b for a, b in zip(self.latency, other.latency, strict=True)],
            router_responses={k: self.router_responses.get(k, 0) + other.router_responses.get(k, 0)
                              for k in sorted(statuses)},
            in_flight=self.in_flight + other.in_flight,
        )

    @property
    def finished(self) -> int:
        """The requests whose outcome is known: a hung request is no success yet."""
        return max(0, self.requests - self.in_flight)

    @property
    def error_rate(self) -> float:
        """Failures over finished requests."""
        if not self.finished:
            return 0.0
        return min(1.0, (self.responses_5xx + self.connection_errors) / self.finished)

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile `q` (inf for the last bucket)."""
        total = sum(self.latency)
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for bound, count in zip((*LATENCY_BOUNDS, float("inf")), self.latency, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


class RouterStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker: str = ""  # changes when the worker restarts
    generation: int = 0  # generation of the table in effect
    revisions: dict[str, Counters] = Field(default_factory=dict)
    in_flight: dict[str, int] = Field(default_factory=dict)  # per backend id
    # per flag cohort, keyed `<flag>:on` / `<flag>:off`, for the flags the router evaluates
    cohorts: dict[str, Counters] = Field(default_factory=dict)
    # requests answered before any revision applied: malformed (400), too large (431), too
    # slow (408), over the connection limit (503), or a router error before routing (502)
    unrouted: Counters = Field(default_factory=Counters)


class Capability(StrEnum):
    """What a router may be able to do beyond sending every request to some instance."""

    WEIGHTS = "weights"  # split traffic between revisions by percent, whatever their sizes
    STICKINESS = "stickiness"  # keep each user on one revision by the user key
    MATCH = "match"  # send chosen users (header, cookie or user key) to a revision
    PREVIEW = "preview"  # serve a revision not in traffic on a second address
    FLAGS = "flags"  # evaluate flags for each request and count their cohorts
    DRAIN = "drain"  # report the requests in flight to each instance
    LATENCY = "latency"  # time each answer into `Counters.latency`, for the gates' p99


# What a router lacking a capability cannot do, as the refusal of a spec says it.
CANNOT: dict[Capability, str] = {
    Capability.WEIGHTS: "split traffic between revisions by weight",
    Capability.STICKINESS: "keep each user on one revision by the user key",
    Capability.MATCH: "send chosen users to a revision",
    Capability.PREVIEW: "serve a revision on a preview address",
    Capability.FLAGS: "evaluate flags for each request",
    Capability.DRAIN: "tell when an instance has no request in flight",
    Capability.LATENCY: "time answers, which a p99 limit and a comparing gate need (a "
                        "Prometheus `metrics.latency` query can)",
}


class NotSupported(RouterError):
    """The router lacks the optional capability a call needs; it says so instead of pretending."""

    def __init__(self, router: str, capability: Capability) -> None:
        super().__init__(f"the router {router!r} cannot {CANNOT[capability]} (not supported)")
        self.router = router
        self.capability = capability


class RouterHasNewer(RouterError):
    """The router refused a flag state: it holds a newer flag revision, `revision`."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__(message)
        self.revision = revision


class RouterInfo(BaseModel):
    """What a router is and where, for `turnout status` and for error messages."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str  # the spec's router.kind
    running: bool
    listen: str | None = None  # where users connect
    preview: str | None = None  # where a revision not in traffic is served, if anywhere
    details: dict[str, str] = Field(default_factory=dict)  # pid, admin address, log, ...

    def __str__(self) -> str:
        state = "running" if self.running else "not running"
        where = [f"listen {self.listen}"] if self.listen else []
        where += [f"{k} {v}" for k, v in self.details.items()]
        return f"{self.kind} router ({', '.join([state, *where])})"


class Router(Protocol):
    """The traffic layer, as the service and the engine use it (see the module docstring)."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this router can do; fixed for its kind."""
        ...

    async def ensure_running(self) -> None:
        """Start the router unless it runs; return once it serves. RouterError if it cannot."""
        ...

    async def stop(self) -> None:
        """End the router (its table stays for the next start); a stopped one is no error."""
        ...

    async def describe(self) -> RouterInfo:
        """What it is, whether it runs and where; never raises for a router that is down."""
        ...

    async def apply(self, table: RoutingTable) -> None:
        """Put `table` in effect atomically; return only once it serves requests.

        A table older (by generation) than the one in effect is refused with RouterError.
        """
        ...

    async def table(self) -> RoutingTable | None:
        """The table in effect; None before any was applied."""
        ...

    async def stats(self) -> RouterStats: ...

    async def drained(self, backend_id: str) -> bool | None:
        """True once no request is in flight to that backend; None if the router cannot tell
        (no `DRAIN` capability: the caller waits its drain timeout)."""
        ...

    async def set_flags(self, state: dict[str, Any], *, revision: int,
                        evaluate: list[str] | None = None, header: str | None = None) -> None:
        """Evaluate `evaluate` (flag names of the Unleash `state` document) for each request's
        user key, forward the results in `header`, and count cohorts apart; in effect on return.
        `evaluate` or `header` left out keep what the router has. `revision` is the flag
        store's revision of `state`; an older one than the router holds is refused with
        `RouterHasNewer`. A router without the `FLAGS` capability raises `NotSupported`."""
        ...

    async def aclose(self) -> None:
        """Let go of connections to the router; the router itself keeps running."""
        ...


def lacking(router: Router, capability: Capability) -> bool:
    """True when `router` does not declare `capability`."""
    return capability not in router.capabilities
