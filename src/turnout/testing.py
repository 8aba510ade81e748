"""Fakes beside the seams, so unit tests pass collaborators in through constructors.

`FakeClock` makes a ten-minute pause instant; `FakePlatform` "runs" instances as records
with made-up ports and can be told that a revision fails to start, exits at once or
answers its health check with 500; `FakeRouter` keeps every table it was given and
reports counters a test sets per revision (to drive gates). Both pass the same contract
suites as the real adapters (tests/contract): `reopen()` is a restarted control plane
over the same fake machine, and the router keeps its table and flags across a stop.
`fake_http` answers HTTP for the fake instances through httpx's own `MockTransport`, so
the engine's real health checks run unchanged. A shared `Journal` records starts, stops
and table applies in one order, and flags any instance stopped while the table in effect
still lists it: the DESIGN's "remove from the router first" rule, checked on every test
for free.

Wherever a fake takes a set of names, an entry names a revision (its id or its version)
or one instance (its id, `<revision id>-<slot>`).
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from turnout.errors import PlatformError, RouterError
from turnout.model import Instance, Revision
from turnout.routers.base import (
    LATENCY_BOUNDS,
    Capability,
    Counters,
    NotSupported,
    RouterHasNewer,
    RouterInfo,
    RouterStats,
)
from turnout.routers.proxy.flags import SettingsError, empty_settings, parse_settings
from turnout.routers.table import RoutingTable
from turnout.spec import Spec
from turnout.statedir import StateDir

__all__ = ["FakeClock", "FakePlatform", "FakeRouter", "Journal", "fake_http", "traffic"]


class FakeClock:
    """A `Clock` whose `sleep` moves time forward at once and only yields to the loop.

    Concurrent sleepers each push the clock forward, so with several tasks sleeping at
    once fake time runs faster than their sleeps add up to; deadlines still hold.
    """

    def __init__(self, *, start: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.slept = 0.0  # total seconds asked for by sleep()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping (for tests driving time by hand)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept += seconds
        self.advance(seconds)
        await asyncio.sleep(0)


class Journal:
    """Starts, stops and applied tables in the order they happened, shared by the fakes."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.stopped_while_routed: list[str] = []
        self._routed: frozenset[str] = frozenset()

    def started(self, instance: Instance) -> None:
        self.entries.append(("start", instance.id))

    def stopped(self, instance: Instance) -> None:
        self.entries.append(("stop", instance.id))
        if instance.id in self._routed:
            self.stopped_while_routed.append(instance.id)

    def applied(self, table: RoutingTable) -> None:
        self._routed = frozenset(table.backend_ids())
        self.entries.append(("apply", ",".join(sorted(self._routed))))


def _named(names: set[str], revision: str, version: str, slot: int | None = None) -> bool:
    return revision in names or version in names or f"{revision}-{slot}" in names


class FakePlatform:
    """A `Platform` whose instances are records; every start gets a new port and pid.

    Like the local platform, starting a slot whose instance still runs returns that
    instance (a step run twice), and `reopen()` finds the live ones again.
    """

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> FakePlatform:
        """For `turnout.wiring` registries in tests."""
        return cls()

    def __init__(
        self, *, host: str = "127.0.0.1", first_port: int = 41_000, journal: Journal | None = None
    ) -> None:
        self.host = host
        self.journal = journal or Journal()
        self.fail_start: set[str] = set()  # start raises PlatformError
        self.exit_on_start: set[str] = set()  # the process is gone right after start
        self.unhealthy: set[str] = set()  # the health check answers 500
        self.started: list[Instance] = []
        self.stopped: list[tuple[Instance, float]] = []  # (instance, grace)
        self.closed = False
        self._ports = itertools.count(first_port)
        self._pids = itertools.count(5_000)
        self._running: dict[str, Instance] = {}  # id -> the latest copy started
        self._dead: set[Instance] = set()

    # -- Platform ------------------------------------------------------------------
    async def start(self, revision: Revision, *, slot: int) -> Instance:
        await asyncio.sleep(0)
        if _named(self.fail_start, revision.id, revision.version, slot):
            raise PlatformError(f"cannot start {revision.id} slot {slot}: told to fail")
        existing = self._running.get(f"{revision.id}-{slot}")
        if existing is not None and self._is_alive(existing):
            return existing
        pid = next(self._pids)
        instance = Instance(
            service=revision.service, revision=revision.id, version=revision.version, slot=slot,
            host=self.host, port=next(self._ports), pid=pid, started=float(pid),
        )
        self._running[instance.id] = instance
        self.started.append(instance)
        self.journal.started(instance)
        if _named(self.exit_on_start, revision.id, revision.version, slot):
            self._dead.add(instance)
        return instance

    async def stop(self, instance: Instance, *, grace: float) -> None:
        await asyncio.sleep(0)
        self.stopped.append((instance, grace))
        self.journal.stopped(instance)
        if self._running.get(instance.id) == instance:
            del self._running[instance.id]
        self._dead.discard(instance)

    async def alive(self, instance: Instance) -> bool:
        return self._is_alive(instance)

    async def instances(self, service: str) -> list[Instance]:
        return [i for i in self.live() if i.service == service]

    async def log_tail(self, instance: Instance, *, lines: int = 20) -> str:
        return self.tail(instance, lines)

    async def aclose(self) -> None:
        self.closed = True

    def tail(self, instance: Instance, lines: int = 20) -> str:
        """What the fake instance "printed": one line saying how it ended, if it did."""
        if instance in self._dead:
            return f"fake {instance.id}: exited with status 1\n"
        return f"fake {instance.id}: listening on {instance.address}\n"

    def reopen(self) -> FakePlatform:
        """A new control plane on the same fake machine: it sees the same processes."""
        twin = copy.copy(self)  # shares the running set, the dead set, the journal, the counters
        twin.closed = False
        return twin

    # -- for tests -----------------------------------------------------------------
    def crash(self, instance: Instance) -> None:
        """The instance's process dies (alive() turns False; it is not stopped)."""
        self._dead.add(instance)

    def live(self) -> list[Instance]:
        return sorted((i for i in self._running.values() if self._is_alive(i)), key=lambda i: i.id)

    def starts(self, revision: str | None = None, slot: int | None = None) -> int:
        """How many times start() made an instance, optionally of one revision and slot."""
        return sum(
            1 for i in self.started
            if (revision is None or _named({revision}, i.revision, i.version))
            and (slot is None or i.slot == slot)
        )

    def at_port(self, port: int) -> Instance | None:
        return next((i for i in self.live() if i.port == port), None)

    def health_status(self, instance: Instance) -> int:
        sick = _named(self.unhealthy, instance.revision, instance.version, instance.slot)
        return 500 if sick else 200

    def _is_alive(self, instance: Instance) -> bool:
        return self._running.get(instance.id) == instance and instance not in self._dead


Responder = Callable[[httpx.Request], httpx.Response | None]


def fake_http(platform: FakePlatform, *, other: Responder | None = None) -> httpx.AsyncClient:
    """An httpx client whose requests reach the fake instances by port.

    A live instance answers with its `health_status`; `other` may answer any request first
    (say, the router's preview address); anything else is refused like a closed port.
    """

    def handle(request: httpx.Request) -> httpx.Response:
        if other is not None:
            answer = other(request)
            if answer is not None:
                return answer
        instance = platform.at_port(request.url.port or 80)
        if instance is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(platform.health_status(instance), text=instance.id)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def traffic(
    requests: int, *, errors: int = 0, connection_errors: int = 0, latency: float = 0.005
) -> Counters:
    """Counters for `requests` requests, `errors` of them 5xx, all about `latency` seconds."""
    buckets = [0] * (len(LATENCY_BOUNDS) + 1)
    buckets[bisect.bisect_left(LATENCY_BOUNDS, latency)] = requests
    return Counters(requests=requests, responses_5xx=errors, connection_errors=connection_errors,
                    latency=buckets)


def _plus(a: Counters, b: Counters) -> Counters:
    return Counters(
        requests=a.requests + b.requests,
        responses_5xx=a.responses_5xx + b.responses_5xx,
        connection_errors=a.connection_errors + b.connection_errors,
        latency=[x + y for x, y in zip(a.latency, b.latency, strict=True)],
    )


@dataclass
class _Life:
    """Whether the fake router's "process" runs, shared by every adapter over it."""

    running: bool


class FakeRouter:
    """A `Router` that keeps every applied table and reports counters the test sets.

    `count()` adds traffic once; `flow()` adds traffic at every `stats()` reading, like
    live load between two looks of a gate; a name `flag:<flag>:on` counts a flag cohort.
    Backends in `busy` never drain. `flag_pushes` keeps every `set_flags` call taken (with
    the settings then in effect) and `flag_revisions` their revisions; the flag settings are
    checked by the proxy's own parser, and one older than the last is refused like the proxy
    does. It starts running (a router an earlier command started) unless `running=False`;
    while stopped it answers nothing, like a process that is gone, and keeps its table and
    flags for its next start. A subclass may declare fewer `capabilities`.
    """

    kind = "fake"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> FakeRouter:
        """For `turnout.wiring` registries in tests."""
        return cls()

    def __init__(self, *, journal: Journal | None = None, running: bool = True) -> None:
        self.journal = journal or Journal()
        self.tables: list[RoutingTable] = []
        self.counters: dict[str, Counters] = {}
        self.flows: dict[str, Counters] = {}
        self.busy: set[str] = set()
        self.fail_apply: str | None = None  # apply raises RouterError with this text
        self.fail_start: str | None = None  # ensure_running raises RouterError with this text
        self.stats_reads = 0
        self.closed = False
        self.flag_pushes: list[tuple[dict[str, Any], list[str], str]] = []
        self.flag_revisions: list[int] = []
        self.flag_settings: dict[str, Any] = empty_settings()
        self._life = _Life(running)

    # -- lifecycle -----------------------------------------------------------------
    async def ensure_running(self) -> None:
        await asyncio.sleep(0)
        if self.fail_start is not None:
            raise RouterError(self.fail_start)
        self._life.running = True

    async def stop(self) -> None:
        await asyncio.sleep(0)
        self._life.running = False

    async def describe(self) -> RouterInfo:
        return RouterInfo(kind=self.kind, running=self._life.running,
                          preview="fake-preview" if Capability.PREVIEW in self.capabilities else None,
                          details={"tables": str(len(self.tables))})

    def reopen(self) -> FakeRouter:
        """Another adapter over the same router "process" (a restarted control plane)."""
        twin = copy.copy(self)  # shares tables, counters, flags and whether it runs
        twin.closed = False
        return twin

    def _answering(self) -> None:
        if not self._life.running:
            raise RouterError(f"the {self.kind} router is not running")

    # -- Router --------------------------------------------------------------------
    async def apply(self, table: RoutingTable) -> None:
        await asyncio.sleep(0)
        self._answering()
        if self.fail_apply is not None:
            raise RouterError(self.fail_apply)
        current = self.tables[-1] if self.tables else None
        if current is not None and table.generation < current.generation:
            raise RouterError(f"generation {table.generation} is older than {current.generation}")
        self.tables.append(table)
        self.journal.applied(table)

    async def table(self) -> RoutingTable | None:
        self._answering()
        return self.tables[-1] if self.tables else None

    async def stats(self) -> RouterStats:
        self._answering()
        self.stats_reads += 1
        for revision, flow in self.flows.items():
            self.counters[revision] = _plus(self.counters.get(revision, Counters()), flow)
        table = self.tables[-1] if self.tables else RoutingTable()
        cohorts = {f"{name}:{side}": Counters() for name in self.flag_settings["evaluate"]
                   for side in ("on", "off")}
        cohorts |= {r.removeprefix("flag:"): c.model_copy(deep=True)
                    for r, c in self.counters.items() if r.startswith("flag:")}
        return RouterStats(
            worker="fake", generation=table.generation,
            revisions={r: c.model_copy(deep=True) for r, c in self.counters.items()
                       if not r.startswith("flag:")},
            in_flight={**{b: 0 for b in table.backend_ids()}, **{b: 1 for b in self.busy}},
            cohorts=cohorts,
        )

    async def set_flags(self, state: dict[str, Any], *, revision: int,
                        evaluate: list[str] | None = None, header: str | None = None) -> None:
        await asyncio.sleep(0)
        if Capability.FLAGS not in self.capabilities:
            raise NotSupported(self.kind, Capability.FLAGS)
        self._answering()
        sent: dict[str, Any] = {"state": state, "revision": revision}
        sent |= {k: v for k, v in (("evaluate", evaluate), ("header", header)) if v is not None}
        try:
            settings, _ = parse_settings(json.dumps(sent).encode(), self.flag_settings)
        except SettingsError as exc:
            raise RouterError(f"the {self.kind} router refused the flags: {exc}") from exc
        held = int(self.flag_settings["revision"])
        if revision < held:
            raise RouterHasNewer(f"flag revision {revision} is older than {held}", held)
        self.flag_settings = settings
        self.flag_pushes.append((state, list(settings["evaluate"]), str(settings["header"])))
        self.flag_revisions.append(revision)

    async def drained(self, backend_id: str) -> bool | None:
        if Capability.DRAIN not in self.capabilities:
            return None
        self._answering()
        return backend_id not in self.busy

    async def aclose(self) -> None:
        self.closed = True

    # -- for tests -----------------------------------------------------------------
    def count(self, revision: str, counters: Counters) -> None:
        self.counters[revision] = _plus(self.counters.get(revision, Counters()), counters)

    def flow(self, revision: str, counters: Counters) -> None:
        self.flows[revision] = counters

    def shares(self) -> dict[str, float]:
        """Percent of traffic per version in the table in effect (versions with none left out)."""
        table = self.tables[-1] if self.tables else RoutingTable()
        return {p.version: table.share(p.revision) for p in table.pools if table.share(p.revision)}
