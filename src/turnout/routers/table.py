"""The routing table: what a router applies atomically.

Pools per revision with weights and backends, match rules that send chosen users to a
revision, the user key, and which revision the preview listener serves.

Stickiness contract (every router implements it the same way): a request's user key is
hashed with MurmurHash3 (32-bit, seed 0, `mmh3.hash(key, signed=False)`) into one of
10,000 buckets; pools take consecutive bucket ranges in table order, each in proportion
to its weight. The engine lists the newest revision first, so as its weight grows a
user only ever moves from old to new. Requests without a user key pick a pool at random
by weight. Match rules are checked first, in order; a match wins over weights.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BUCKETS = 10_000


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


class RoutingTable(_Frozen):
    generation: int = 0
    pools: tuple[Pool, ...] = ()
    rules: tuple[MatchRule, ...] = ()
    user_key: UserKey = UserKey()
    preview: str | None = None  # Revision.id served on the preview listener

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
