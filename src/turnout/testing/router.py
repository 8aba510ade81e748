"""`FakeRouter`: every applied table kept, counters set by the test, and `traffic` to make
them."""

from __future__ import annotations

import asyncio
import bisect
import copy
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from turnout.errors import RouterError
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
from turnout.spec.routing import RouterChoice
from turnout.statedir import StateDir
from turnout.testing.journal import Journal


def traffic(
    requests: int, *, errors: int = 0, connection_errors: int = 0, latency: float = 0.005
) -> Counters:
    """Counters for `requests` requests, `errors` of them 5xx, all about `latency` seconds."""
    buckets = [0] * (len(LATENCY_BOUNDS) + 1)
    buckets[bisect.bisect_left(LATENCY_BOUNDS, latency)] = requests
    return Counters(requests=requests, responses_5xx=errors, connection_errors=connection_errors,
                    latency=buckets)


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

    @classmethod
    def capabilities_for(cls, choice: RouterChoice) -> frozenset[Capability]:
        """For `turnout.wiring` registries in tests: the class's `capabilities`."""
        return cls.capabilities

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
            self.counters[revision] = self.counters.get(revision, Counters()).plus(flow)
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
        self.counters[revision] = self.counters.get(revision, Counters()).plus(counters)

    def flow(self, revision: str, counters: Counters) -> None:
        self.flows[revision] = counters

    def shares(self) -> dict[str, float]:
        """Percent of traffic per version in the table in effect (versions with none left out)."""
        table = self.tables[-1] if self.tables else RoutingTable()
        return {p.version: table.share(p.revision) for p in table.pools if table.share(p.revision)}
