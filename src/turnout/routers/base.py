"""The `Router` seam: apply a table atomically, read it back, count traffic, report drains."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from turnout.routers.table import RoutingTable

# Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)


class Counters(BaseModel):
    """Counters for one revision (or cohort); the router keeps them across worker restarts.

    `requests` counts every request routed to the revision. Each failed one counts once:
    in `responses_5xx` when the client got a 5xx status (from the instance, or a 503 from
    the router), else in `connection_errors` (the instance could not be reached or heard
    from: a 502 or 504 the router answered, or a response cut short). `router_responses`
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
            requests=self.requests - earlier.requests,
            responses_5xx=self.responses_5xx - earlier.responses_5xx,
            connection_errors=self.connection_errors - earlier.connection_errors,
            latency=[a - b for a, b in zip(self.latency, earlier.latency, strict=True)],
            router_responses={k: n - earlier.router_responses.get(k, 0)
                              for k, n in self.router_responses.items()
                              if n - earlier.router_responses.get(k, 0)},
        )

    @property
    def error_rate(self) -> float:
        if not self.requests:
            return 0.0
        return (self.responses_5xx + self.connection_errors) / self.requests

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


class Router(Protocol):
    async def apply(self, table: RoutingTable) -> None:
        """Put `table` in effect atomically; return only once it serves requests."""
        ...

    async def table(self) -> RoutingTable | None: ...

    async def stats(self) -> RouterStats: ...

    async def drained(self, backend_id: str) -> bool:
        """True once no request is in flight to that backend."""
        ...

    async def set_flags(self, state: dict[str, Any], *, evaluate: list[str], header: str,
                        revision: int) -> None:
        """Evaluate `evaluate` (flag names of the Unleash `state` document) for each request's
        user key, forward the results in `header`, and count cohorts apart; in effect on return.
        `revision` is the flag store's revision of `state`; an older one than the router holds
        is refused with RouterError."""
        ...

    async def aclose(self) -> None: ...
