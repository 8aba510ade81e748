"""The routing table: what a router applies atomically.

Pools per revision with weights and backends, match rules that send chosen users to a
revision, the user key, which revision the preview listener serves, and the limits and
timeouts the router holds every client and instance to (the spec's `routing.limits`,
`routing.timeouts`, `routing.buffer_requests` and `routing.trust_forwarded`, passed on as
they are so that a router applies them with the table they belong to).

Stickiness contract (every router implements it the same way): a request's user key is
hashed with MurmurHash3 (32-bit, seed 0, `mmh3.hash(key, signed=False)`) into one of
10,000 buckets; pools take consecutive bucket ranges in table order, each in proportion
to its weight. The engine lists the newest revision first, so as its weight grows a
user only ever moves from old to new. Requests without a user key pick a pool at random
by weight. Match rules are checked first, in order; a match wins over weights.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from turnout.units import Duration, Size

BUCKETS = 10_000
KIB = 1024
MIB = 1024 * KIB


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Backend(_Frozen):
    id: str  # Instance.id
    address: str  # host:port


class Pool(_Frozen):
    revision: str  # Revision.id
    version: str
    weight: int = Field(ge=0)
    backends: tuple[Backend, ...] = ()


class MatchRule(_Frozen):
    """Header `header` or cookie `cookie` with a value in `values`, or a user key in `users`."""

    revision: str
    header: str | None = None
    cookie: str | None = None
    values: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


class UserKey(_Frozen):
    header: str | None = "X-User-Id"
    cookie: str | None = None


class Limits(_Frozen):
    """What one client may ask of the router; beyond it the router answers and closes."""

    max_header_size: Size = Field(
        default=32 * KIB, ge=1024, le=16 * MIB,
        description="request line and headers together; larger heads get 431",
    )
    max_headers: int = Field(default=100, ge=1, le=10_000, description="more header lines get 431")
    max_connections: int = Field(
        default=4096, ge=1, le=1_000_000,
        description="open client connections (WebSockets included); more are answered 503 and closed",
    )
    max_buffered: Size = Field(
        default=256 * MIB, ge=0,
        description="request bodies held at once by buffer_requests, all clients together; beyond: 503",
    )


class Timeouts(_Frozen):
    """How long the router waits for each party before it gives up on it (at least 100 ms each:
    the router looks at its connections five times per shortest timeout)."""

    header: Duration = Field(
        default=10.0, ge=0.1,
        description="a request's line and headers, from their first byte (from the connection for "
        "its first request) (408); a trickle cannot extend it",
    )
    idle: Duration = Field(default=75.0, ge=0.1, description="a keep-alive connection without a request")
    body: Duration = Field(
        default=30.0, ge=0.1,
        description="the longest silence of a client while it sends a request body (408)",
    )
    connect: Duration = Field(
        default=5.0, ge=0.1, description="connecting to an instance (then another; 504)"
    )
    response: Duration = Field(
        default=60.0, ge=0.1,
        description="the longest an instance may neither answer nor take the request body (504, or cut)",
    )
    send: Duration = Field(
        default=60.0, ge=0.1, description="the longest a client may leave its answer unread (cut)"
    )
    tunnel: Duration = Field(
        default=3600.0, ge=0.1, description="the longest silence of a WebSocket or other upgraded connection"
    )


class RoutingTable(_Frozen):
    generation: int = 0
    pools: tuple[Pool, ...] = ()
    rules: tuple[MatchRule, ...] = ()
    user_key: UserKey = UserKey()
    preview: str | None = None  # Revision.id served on the preview listener
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    buffer_requests: int | None = Field(
        default=None, ge=0,
        description="bytes of request body read before the instance is called; None: stream",
    )
    trust_forwarded: bool = True  # keep X-Forwarded-Proto/-Host a client sent

    def pool(self, revision: str) -> Pool | None:
        return next((p for p in self.pools if p.revision == revision), None)

    def weights(self) -> dict[str, int]:
        return {p.revision: p.weight for p in self.pools}

    def backend_ids(self) -> set[str]:
        ids = {b.id for p in self.pools for b in p.backends}
        return ids

    def share(self, revision: str) -> float:
        """The percentage of unmatched traffic `revision` receives."""
        total = sum(p.weight for p in self.pools if p.backends)
        pool = self.pool(revision)
        if not total or pool is None or not pool.backends:
            return 0.0
        return 100.0 * pool.weight / total
