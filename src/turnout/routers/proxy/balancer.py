"""The balancer: a `RoutingTable` compiled into lookup structures a request walks in O(1).

Compiling happens once per applied table (`Plan.compile`); the worker then swaps one
reference, so a request always sees one whole table. Per request the work is: the match
rules in order (dict and set lookups), else the user key's MurmurHash3 bucket found by
bisection over consecutive bucket ranges, else a random bucket over the same ranges; then
round robin inside the chosen pool, passing over backends that `Outliers` holds down
(a connect to them failed a moment ago) while another of the pool is up. Everything here
is pure and unit tested on its own.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field

import mmh3

from turnout.addresses import split_host_port
from turnout.routers.table import BUCKETS, MatchRule, Pool, RoutingTable

COOKIE = b"cookie"


@dataclass(slots=True, frozen=True)
class BackendRef:
    """One backend as the data path needs it: id for counters, host/port to connect."""

    id: str
    revision: str
    host: str
    port: int
    address: str = field(init=False, compare=False)  # "host:port", the idle pool's key

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", f"{self.host}:{self.port}")


OUTLIER_FIRST = 1.0  # seconds a backend is passed over after its first failed connect
OUTLIER_MOST = 30.0  # the longest, after repeated failures (each doubles the time)
OUTLIER_PROBE = 5.0  # how long one request's try of a held backend keeps the others away


class Outliers:
    """Backends whose last connect failed, by address, or by host when the host itself did
    not answer (unreachable, timed out: every port of it is as lost as the one tried).

    Such a backend is passed over until its time is up; then real traffic tries it again,
    and a success clears it. A host that is lost therefore costs one failed connect per
    period, retried on another backend, instead of one per request.
    """

    def __init__(self) -> None:
        self.until: dict[str, float] = {}  # address or host -> time.monotonic() to try again
        self._period: dict[str, float] = {}

    def failed(self, backend: BackendRef, *, whole_host: bool = False) -> None:
        key = backend.host if whole_host else backend.address
        period = min(OUTLIER_MOST, 2 * self._period.get(key, OUTLIER_FIRST / 2))
        self._period[key] = period
        self.until[key] = time.monotonic() + period

    def succeeded(self, backend: BackendRef) -> None:
        for key in (backend.address, backend.host):
            if key in self.until:
                del self.until[key]
                self._period.pop(key, None)

    def retain(self, backends: frozenset[BackendRef]) -> None:
        """Forget holds on addresses and hosts that no backend of the table in effect has
        (in place: every pool shares `until`), so the check on each request is one empty-dict
        test again once held backends are gone from routing."""
        live = {b.address for b in backends} | {b.host for b in backends}
        for key in [k for k in self.until if k not in live]:
            del self.until[key]
            self._period.pop(key, None)

    def is_down(self, backend: BackendRef) -> bool:
        return _held(self.until, backend, time.monotonic())


def _held(down: dict[str, float], backend: BackendRef, now: float) -> bool:
    return down.get(backend.address, 0.0) > now or down.get(backend.host, 0.0) > now


@dataclass(slots=True)
class PoolPlan:
    """A pool's backends with a round-robin cursor; `down` is the proxy's `Outliers.until`."""

    revision: str
    backends: tuple[BackendRef, ...]
    cursor: int = 0
    down: dict[str, float] = field(default_factory=dict)

    def pick(self) -> BackendRef | None:
        backends = self.backends
        if not backends:
            return None
        self.cursor = (self.cursor + 1) % len(backends)
        backend = backends[self.cursor]
        down = self.down
        if down and (backend.address in down or backend.host in down):
            return self._next_up(backend)
        return backend

    def _next_up(self, first: BackendRef) -> BackendRef:
        """From the cursor on, the first backend not held down (`first` if all are). One
        whose hold has ended is tried by this request alone: the hold is renewed for
        `OUTLIER_PROBE` meanwhile, so a host still gone costs one slow connect, not many."""
        now = time.monotonic()
        count = len(self.backends)
        for step in range(count):
            index = (self.cursor + step) % count
            backend = self.backends[index]
            if not _held(self.down, backend, now):
                self.cursor = index
                for key in (backend.address, backend.host):
                    if key in self.down:
                        self.down[key] = now + OUTLIER_PROBE
                return backend
        return first


@dataclass(slots=True, frozen=True)
class _Rule:
    pool: PoolPlan
    header: bytes | None
    cookie: str | None
    values: frozenset[bytes]
    users: frozenset[bytes]


def split_address(address: str) -> tuple[str, int]:
    return split_host_port(address, any_port=True)


def bucket_of(key: bytes | str) -> int:
    """The stickiness bucket of a user key (the contract in `turnout.routers.table`)."""
    return int(mmh3.hash(key, signed=False)) % BUCKETS


def bucket_ends(weights: list[int]) -> list[int]:
    """Exclusive upper bucket of each pool's consecutive range, in proportion to weight.

    Cumulative flooring makes the ranges monotonic: when the first pool's weight grows at the
    expense of later ones, its range only extends, so a user only ever moves towards it.
    """
    total = sum(weights)
    if total <= 0:
        return []
    ends: list[int] = []
    running = 0
    for weight in weights:
        running += weight
        ends.append(BUCKETS * running // total)
    return ends


def parse_cookies(header: bytes) -> dict[str, bytes]:
    cookies: dict[str, bytes] = {}
    for part in header.split(b";"):
        name, sep, value = part.partition(b"=")
        if sep:
            cookies.setdefault(name.strip().decode("latin-1"), value.strip().strip(b'"'))
    return cookies


@dataclass(slots=True)
class Plan:
    """A compiled routing table. `route` reads only lowercase header names from `wanted`."""

    table: RoutingTable
    pools: dict[str, PoolPlan]
    rules: tuple[_Rule, ...]
    ends: list[int]
    ranged: list[PoolPlan]
    key_header: bytes | None
    key_cookie: str | None
    preview: PoolPlan | None
    wanted: frozenset[bytes] = field(default_factory=frozenset)
    drop: frozenset[bytes] = field(default_factory=frozenset)  # request headers not forwarded
    buffering: bool = False  # request bodies are read whole before an instance is called
    backends: frozenset[BackendRef] = field(default_factory=frozenset)

    @classmethod
    def compile(cls, table: RoutingTable, down: dict[str, float] | None = None) -> Plan:
        """`down`: the proxy's `Outliers.until`, shared by every pool (default: none held)."""
        held = {} if down is None else down
        pools = {p.revision: _pool_plan(p, held) for p in table.pools}
        rules = tuple(_compile_rule(r, pools) for r in table.rules if r.revision in pools)
        ranged_src = [p for p in table.pools if p.backends and p.weight > 0]
        key_header = table.user_key.header.lower().encode() if table.user_key.header else None
        wanted = {r.header for r in rules if r.header}
        if key_header:
            wanted.add(key_header)
        if table.user_key.cookie or any(r.cookie for r in rules):
            wanted.add(COOKIE)
        return cls(
            table=table,
            pools=pools,
            rules=rules,
            ends=bucket_ends([p.weight for p in ranged_src]),
            ranged=[pools[p.revision] for p in ranged_src],
            key_header=key_header,
            key_cookie=table.user_key.cookie,
            preview=pools.get(table.preview) if table.preview else None,
            wanted=frozenset(wanted),
            backends=frozenset(b for p in pools.values() for b in p.backends),
        )

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(b.address for b in self.backends)

    def route(self, headers: Mapping[bytes, bytes]) -> PoolPlan | None:
        """The pool for a request whose wanted headers (lowercase names) are `headers`."""
        return self.route_keyed(headers)[0]

    def route_keyed(self, headers: Mapping[bytes, bytes]) -> tuple[PoolPlan | None, bytes | None]:
        """The pool for a request whose wanted headers (lowercase names) are `headers`, and
        the request's user key (for flag evaluation). This runs once per request."""
        cookies: dict[str, bytes] | None = None
        if COOKIE in headers and (self.key_cookie or self.rules):
            cookies = parse_cookies(headers[COOKIE])
        key = headers.get(self.key_header) if self.key_header is not None else None
        if not key:
            key = self._user_key(headers, cookies)
        for rule in self.rules:
            if _matches(rule, headers, cookies, key):
                return rule.pool, key
        if not self.ends:
            return None, key
        # bucket_of, inlined
        bucket = mmh3.hash(key, signed=False) % BUCKETS if key else random.randrange(BUCKETS)
        return self.ranged[bisect_right(self.ends, bucket)], key

    def bucket_pool(self, bucket: int) -> str | None:
        """The revision a bucket maps to (for tests and diagnostics)."""
        if not self.ends:
            return None
        return self.ranged[bisect_right(self.ends, bucket)].revision

    def fallbacks(self, first: PoolPlan) -> list[BackendRef]:
        """Backends to try after a failed connect: this plan's pool of `first`'s revision, then
        other pools. `first` may come from an older plan (the table changed while a connect
        waited): its revision's backends are then this plan's, not the stale ones."""
        same = self.pools.get(first.revision)
        lead = same.backends if same is not None else ()
        others = [b for p in self.pools.values() if p is not same for b in p.backends]
        candidates = [*lead, *others]
        down = first.down
        if down:  # those that failed lately last (held ones at the very end), in order otherwise
            now = time.monotonic()
            candidates.sort(key=lambda b: (_held(down, b, now), b.address in down or b.host in down))
        return candidates

    def _user_key(
        self, headers: Mapping[bytes, bytes], cookies: dict[str, bytes] | None
    ) -> bytes | None:
        if self.key_header is not None:
            value = headers.get(self.key_header)
            if value:
                return value
        if self.key_cookie is not None and cookies:
            return cookies.get(self.key_cookie) or None
        return None


def _pool_plan(pool: Pool, down: dict[str, float]) -> PoolPlan:
    refs = tuple(
        BackendRef(b.id, pool.revision, *split_address(b.address)) for b in pool.backends
    )
    return PoolPlan(pool.revision, refs, cursor=random.randrange(max(1, len(refs))), down=down)


def _compile_rule(rule: MatchRule, pools: dict[str, PoolPlan]) -> _Rule:
    return _Rule(
        pool=pools[rule.revision],
        header=rule.header.lower().encode() if rule.header else None,
        cookie=rule.cookie,
        values=frozenset(v.encode() for v in rule.values),
        users=frozenset(u.encode() for u in rule.users),
    )


def _matches(
    rule: _Rule,
    headers: Mapping[bytes, bytes],
    cookies: dict[str, bytes] | None,
    key: bytes | None,
) -> bool:
    if not rule.pool.backends:
        return False
    if rule.header is not None and headers.get(rule.header) in rule.values:
        return True
    if rule.cookie is not None and cookies and cookies.get(rule.cookie) in rule.values:
        return True
    return key is not None and key in rule.users
