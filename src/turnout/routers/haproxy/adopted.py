"""`AdoptedHaproxy`: the `Router` seam over one backend of an HAProxy the user already runs.

`router: {kind: haproxy, adopt: {socket: ..., backend: ..., config: ...}}`. The HAProxy is
the user's: turnout neither starts, reloads nor stops it, brings no Lua and no map into it,
and changes one backend only, through the runtime API at `socket` (`level admin`). That
backend's servers are turnout's slots, declared by the user as placeholders (`server s0
127.0.0.1:1 disabled`), at least twice the spec's `instances` of them, in a backend balanced
`roundrobin` (where a weight set at run time counts at once).

Traffic is split by server weights alone, so the capabilities are WEIGHTS and DRAIN: each
revision's weight is spread over its servers (`spread`), and each request goes wherever
round robin sends it (no stickiness, match rules, preview or flags: the spec check refuses
what needs them). `apply` points a free slot (one in maintenance) at each new backend with
`set server ... addr`, sets its weight and makes it ready; servers whose backends left the
table go to `drain`, and to `maint` (free again) once `drained` finds nothing in flight
there. HAProxy is the truth: a backend keeps the server already pointing at its address,
and a server that no backend of the table claims is drained (and freed at a later apply once
idle), so a control plane killed in the middle of an apply leaves HAProxy serving what it
had or what was being put in, and the next apply puts everything straight. Everything is
read back before `apply` returns.

With `config`, the backend's `server` lines in that file are then rewritten from what HAProxy
carries (`section.rewrite`; every other byte stays), so a reload of the user's file keeps the
routing; without it only the running HAProxy changes, and a reload of the user's file goes
back to the servers the file declares. What turnout keeps for itself (the table, which
server carries which backend, counters' baselines) is `adopted.json` in its state folder.

`stats` reads the backend's servers in `show stat`: `lbtot` (times chosen) as requests,
`hrsp_5xx` as 5xx answers, `econ` + `eresp` as connection errors (HAProxy's own 502 is an
`eresp`, never a 5xx of the server), `scur` + `qcur` in flight. Without turnout's Lua no
answer is timed into a histogram: `Counters.latency` stays empty and the router lacks
LATENCY, so the spec check refuses a p99 limit or a comparing gate unless Prometheus gives
the latency; a gate's default p99 limit, which the spec does not write, is not judged (an
empty histogram reads as p99 0). A server taken by another revision carries on counting, so
its counters then are kept as its baseline, and what it had counted stays with its former
revision. HAProxy's counters start again with each worker (a reload): `RouterStats.worker`
says which one counted, and `Counters.minus` takes a reading that went down as a new start.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from turnout.errors import RouterError
from turnout.files import write_atomic
from turnout.routers.base import Capability, Counters, NotSupported, RouterInfo, RouterStats
from turnout.routers.haproxy import section
from turnout.routers.haproxy.router import _resolved
from turnout.routers.haproxy.runtime import Runtime, ServerState, StatRow, parse_stat
from turnout.routers.table import RoutingTable
from turnout.spec import Spec
from turnout.spec.routing import Adopt
from turnout.statedir import StateDir

STATE_FILE = "adopted.json"
MAX_WEIGHT = 256  # HAProxy's highest server weight
SLOTS_PER_INSTANCE = 2  # a revision's fleet and the next one's side by side
ALGORITHM = "roundrobin"  # the balancing whose weights change at once, in proportion
SERVERS = 4  # `show stat`'s type for server rows
BACKEND_ROW = 2  # and for a backend's own row


class Reading(BaseModel):
    """Counters as one HAProxy worker counted them."""

    model_config = ConfigDict(extra="forbid")
    worker: str = ""
    counters: Counters = Field(default_factory=Counters)


class Adoption(BaseModel):
    """What `adopted.json` holds: the table in effect, the server carrying each backend, the
    servers draining, and who counts what."""

    model_config = ConfigDict(extra="forbid")
    table: RoutingTable = Field(default_factory=RoutingTable)
    slots: dict[str, str] = Field(default_factory=dict)  # backend id -> server
    released: dict[str, str] = Field(default_factory=dict)  # backend id -> server, draining
    owners: dict[str, str] = Field(default_factory=dict)  # server -> revision it counts for
    baselines: dict[str, Reading] = Field(default_factory=dict)  # server -> when it was taken
    carried: dict[str, Reading] = Field(default_factory=dict)  # revision -> of servers it gave up


def spread(table: RoutingTable, slots: Mapping[str, str]) -> dict[str, int]:
    """HAProxy weights (0-256) of the servers in `slots` (backend id -> server) so that the
    servers of each revision together take its share of the table's weight: totals scaled so
    that the heaviest server gets 256, each split over the revision's servers (the first ones
    one more where it does not divide). A revision with weight takes at least 1."""
    weights = {server: 0 for server in slots.values()}
    pools = [p for p in table.pools if p.backends and p.weight > 0]
    if not pools:
        return weights
    scale = MAX_WEIGHT / max(p.weight / len(p.backends) for p in pools)
    for pool in pools:
        whole = max(1, min(MAX_WEIGHT * len(pool.backends), round(pool.weight * scale)))
        each, extra = divmod(whole, len(pool.backends))
        for i, backend in enumerate(pool.backends):
            weights[slots[backend.id]] = each + (1 if i < extra else 0)
    return weights


def counters(row: StatRow) -> Counters:
    """A server's counters in `show stat` (see the module docstring)."""
    return Counters(requests=row.number("lbtot"), responses_5xx=row.number("hrsp_5xx"),
                    connection_errors=row.number("econ") + row.number("eresp"),
                    in_flight=row.number("scur") + row.number("qcur"))


def _since(now: Counters, baseline: Reading | None, worker: str) -> Counters:
    """What a server counted since `baseline` (all of it, for a baseline of another worker)."""
    if baseline is None or baseline.worker != worker:
        return now
    return now.minus(baseline.counters).model_copy(update={"in_flight": now.in_flight})


class AdoptedHaproxy:
    """One backend of a running HAProxy, steered through its runtime API (module docstring)."""

    kind = "haproxy"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.WEIGHTS, Capability.DRAIN})

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> AdoptedHaproxy:
        """The spec's adopted HAProxy; turnout's own files in the state folder's `haproxy-adopted/`."""
        adopt = spec.router.adopt
        if adopt is None:
            raise RouterError("router.adopt is not set: this HAProxy is not the user's")
        return cls(state.path / "haproxy-adopted", adopt, listen=spec.listen,
                   slots=SLOTS_PER_INSTANCE * spec.instances)

    def __init__(self, folder: Path, adopt: Adopt, *, listen: str = "", slots: int = 2) -> None:
        self.folder = folder
        self.socket = Path(adopt.socket)
        self.backend = adopt.backend
        self.config_path = Path(adopt.config) if adopt.config is not None else None
        self.listen = listen  # where users connect, as the spec says: the user's frontend
        self.slots_needed = slots
        self.runtime = Runtime(self.socket)
        self.state_path = folder / STATE_FILE
        self._lock = asyncio.Lock()

    # --- what is saved
    def _load(self) -> Adoption:
        try:
            return Adoption.model_validate_json(self.state_path.read_bytes())
        except FileNotFoundError:
            return Adoption()
        except (OSError, ValidationError) as exc:
            raise RouterError(f"adopted HAProxy: unreadable {self.state_path}: {exc}") from exc

    def _save(self, adoption: Adoption) -> None:
        try:
            write_atomic(self.state_path, adoption.model_dump_json().encode())
        except OSError as exc:
            raise RouterError(f"cannot write {self.state_path}: {exc}") from exc

    async def _write_config(self) -> None:
        """The backend's `server` lines of the user's file as HAProxy has the servers now."""
        if self.config_path is None:
            return
        servers = {s.server: s for s in await self._servers()}
        try:
            before = self.config_path.read_bytes().decode("utf-8", "surrogateescape")
            after = section.rewrite(before, self.backend, servers)
            if after != before:
                section.replace_file(self.config_path, after.encode("utf-8", "surrogateescape"))
        except (OSError, ValueError) as exc:
            raise RouterError(f"cannot write backend {self.backend} into {self.config_path}: "
                              f"{exc}") from exc

    # --- life: the HAProxy is the user's
    async def ensure_running(self) -> None:
        """Start nothing: check that the runtime API answers at `level admin`, that the
        backend exists, balances round robin and has enough servers, and that `config` (if
        given) declares each of them and can be replaced; RouterError saying what is missing."""
        level = await self._level()
        if level != "admin":
            raise RouterError(f"HAProxy's runtime API at {self.socket} answers at level {level!r}: "
                              "turnout needs `level admin` on that `stats socket`")
        backends = (await self.runtime.command("show backend")).split()[2:]  # after "# name"
        if self.backend not in backends:
            raise RouterError(f"HAProxy at {self.socket} has no backend {self.backend!r} "
                              f"(it has: {', '.join(backends) or 'none'})")
        rows = await self._rows(servers_only=False)
        algorithm = next((r.text("algo") for r in rows if r.name == "BACKEND"), "")
        if algorithm != ALGORITHM:
            raise RouterError(f"backend {self.backend} balances {algorithm or 'how HAProxy did not say'}"
                              f": turnout splits traffic by server weights, which needs `balance "
                              f"{ALGORITHM}`")
        servers = await self._servers()
        if len(servers) < self.slots_needed:
            raise RouterError(
                f"backend {self.backend} has {len(servers)} servers; turnout needs "
                f"{self.slots_needed} (twice `instances`): declare the others as "
                + ", ".join(f"`server s{i} 127.0.0.1:1 disabled`"
                            for i in range(len(servers), self.slots_needed)))
        self._check_config(servers)

    async def _level(self) -> str:
        try:
            return (await self.runtime.command("show cli level")).strip()
        except RouterError as exc:
            raise RouterError(f"the adopted HAProxy does not answer: {exc}") from exc

    def _check_config(self, servers: list[ServerState]) -> None:
        if self.config_path is None:
            return
        path = self.config_path
        try:
            declared = section.server_lines(path.read_bytes().decode("utf-8", "surrogateescape"),
                                            self.backend)
        except (OSError, ValueError) as exc:
            raise RouterError(f"router.adopt.config {path}: {exc}") from exc
        missing = [s.server for s in servers if s.server not in declared]
        if missing:
            raise RouterError(f"router.adopt.config {path} does not declare {', '.join(missing)} in "
                              f"backend {self.backend}: it is not the file HAProxy runs")
        if not os.access(path.resolve().parent, os.W_OK):
            raise RouterError(f"router.adopt.config {path}: turnout replaces the file in one "
                              "rename, which needs its folder writable")

    async def stop(self) -> None:
        """Leave HAProxy running and the backend as it is: the HAProxy is the user's, and its
        servers keep pointing where they do (at instances `turnout down` then stops, which
        fail their requests until the next deployment fills the slots again)."""

    async def describe(self) -> RouterInfo:
        try:
            await self.runtime.command("show info")
            running = True
        except RouterError:
            running = False
        details = {"adopted": str(self.socket), "backend": self.backend}
        if self.config_path is not None:
            details["config"] = str(self.config_path)
        return RouterInfo(kind=self.kind, running=running, listen=self.listen or None, details=details)

    async def aclose(self) -> None:
        """Nothing to let go of: every command has its own connection."""

    # --- readings
    async def _servers(self) -> list[ServerState]:
        return await self.runtime.servers_state(self.backend)

    async def _rows(self, *, servers_only: bool = True) -> list[StatRow]:
        """The backend's rows of `show stat` (its servers', and with `servers_only` False
        its own). Every proxy's are asked for and those of the backend kept: asked by name,
        HAProxy would answer for a frontend of the same name (`frontend web` + `backend web`)."""
        line = f"show stat -1 {SERVERS if servers_only else SERVERS | BACKEND_ROW} -1"
        answer = await self.runtime.command(line)
        try:
            rows = parse_stat(answer)
        except ValueError as exc:
            raise RouterError(f"HAProxy at {self.socket}: {line!r} answered "
                              f"{answer.strip()[:200]!r}") from exc
        return [r for r in rows if r.proxy == self.backend and r.name != "FRONTEND"]

    async def _readings(self) -> tuple[str, dict[str, Counters]]:
        """The worker's pid and each server's counters."""
        info = await self.runtime.command("show info")
        worker = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("Pid:")), "")
        return worker, {r.name: counters(r) for r in await self._rows() if r.is_server}

    # --- tables
    async def table(self) -> RoutingTable | None:
        table = self._load().table
        return table if (table.pools or table.generation) else None

    async def apply(self, table: RoutingTable) -> None:
        """Put `table` in effect (module docstring), read it back, then save it and write the
        backend into `config`."""
        if table.rules:
            raise NotSupported(self.kind, Capability.MATCH)
        async with self._lock:
            before = self._load()
            if table.generation < before.table.generation:
                raise RouterError(f"adopted HAProxy has generation {before.table.generation}, "
                                  f"newer than {table.generation}")
            servers = await self._servers()
            worker, now = await self._readings()
            addresses = {b.id: await _resolved(b.address) for p in table.pools for b in p.backends}
            idle = {s.server for s in servers
                    if s.state == "drain" and now.get(s.server, Counters()).in_flight == 0}
            adoption = self._place(before, table, servers, addresses, idle)
            adoption = self._owned(before, adoption, worker, now)
            weights = spread(table, adoption.slots)
            for server in sorted(idle - set(adoption.slots.values())):  # drained: free again
                await self.runtime.set_server_state(self.backend, server, "maint")
            await self._fill(adoption, servers, addresses, weights)
            await self._release(adoption, servers)
            await self._verify(adoption, addresses, weights)
            self._save(adoption)
            await self._write_config()

    def _place(self, before: Adoption, table: RoutingTable, servers: list[ServerState],
               addresses: dict[str, tuple[str, int]], idle: set[str]) -> Adoption:
        """The server of each backend: the one pointing at its address already (its own first),
        else a free one (in maintenance, or `idle`: draining with nothing in flight); every
        other server not free is released."""
        taken: dict[str, str] = {}  # server -> backend id
        backends = [b.id for p in table.pools for b in p.backends]
        for backend_id in backends:
            own = before.slots.get(backend_id) or before.released.get(backend_id)
            at = [s.server for s in servers if s.state != "maint" and s.server not in taken
                  and (s.host, s.port) == addresses[backend_id]]
            if at:
                taken[own if own in at else at[0]] = backend_id
        free = [s.server for s in servers
                if (s.state == "maint" or s.server in idle) and s.server not in taken]
        for backend_id in backends:
            if backend_id in taken.values():
                continue
            if not free:
                busy = sum(1 for s in servers if s.state == "drain")
                raise RouterError(f"backend {self.backend}: no free server for {backend_id} "
                                  f"({len(servers)} servers, {busy} still draining)")
            taken[free.pop(0)] = backend_id
        known = {server: b for b, server in {**before.slots, **before.released}.items()}
        released = {known.get(s.server, f"server {s.server}"): s.server for s in servers
                    if s.state != "maint" and s.server not in taken and s.server not in idle}
        return before.model_copy(update={
            "table": table, "slots": {b: s for s, b in taken.items()}, "released": released})

    def _owned(self, before: Adoption, adoption: Adoption, worker: str,
               now: dict[str, Counters]) -> Adoption:
        """Servers that pass to another revision: what they counted so far stays with their
        former revision, and their counters now are their baseline."""
        revision_of = {b.id: p.revision for p in adoption.table.pools for b in p.backends}
        owners, baselines = dict(before.owners), dict(before.baselines)
        carried = dict(before.carried)
        for backend_id, server in adoption.slots.items():
            revision, former = revision_of[backend_id], owners.get(server)
            if revision == former:
                continue
            reading = now.get(server, Counters()).model_copy(update={"in_flight": 0})
            if former is not None:
                counted = _since(reading, baselines.get(server), worker)
                kept = carried.get(former)
                if kept is not None and kept.worker == worker:
                    counted = kept.counters.plus(counted)
                carried[former] = Reading(worker=worker, counters=counted)
            owners[server] = revision
            baselines[server] = Reading(worker=worker, counters=reading)
        in_table = {p.revision for p in adoption.table.pools}
        return adoption.model_copy(update={
            "owners": owners, "baselines": baselines,
            "carried": {r: c for r, c in carried.items() if r in in_table}})

    async def _fill(self, adoption: Adoption, servers: list[ServerState],
                    addresses: dict[str, tuple[str, int]], weights: dict[str, int]) -> None:
        """Point each backend's server at it with its weight, then make it ready (what
        already is, stays)."""
        states = {s.server: s for s in servers}
        for backend_id, server in adoption.slots.items():
            now, (host, port) = states[server], addresses[backend_id]
            if (now.host, now.port) != (host, port):
                await self.runtime.set_server_address(self.backend, server, host, port)
            if now.weight != weights[server]:
                await self.runtime.set_server_weight(self.backend, server, weights[server])
            if now.state != "ready" or (now.host, now.port) != (host, port):
                await self.runtime.set_server_state(self.backend, server, "ready")

    async def _release(self, adoption: Adoption, servers: list[ServerState]) -> None:
        """Servers of backends gone from the table take no new request (drain)."""
        ready = {s.server for s in servers if s.state == "ready"}
        for server in adoption.released.values():
            if server in ready:
                await self.runtime.set_server_state(self.backend, server, "drain")

    async def _verify(self, adoption: Adoption, addresses: dict[str, tuple[str, int]],
                      weights: dict[str, int]) -> None:
        """Read back what `apply` set; RouterError for what HAProxy does not carry."""
        states = {s.server: s for s in await self._servers()}
        for backend_id, server in adoption.slots.items():
            now = states.get(server)
            if (now is None or now.state != "ready" or (now.host, now.port) != addresses[backend_id]
                    or now.weight != weights[server]):
                raise RouterError(f"HAProxy does not carry backend {backend_id} in "
                                  f"{self.backend}/{server} at weight {weights[server]}: {now}")
        for backend_id, server in adoption.released.items():
            now = states.get(server)
            if now is not None and now.state == "ready":
                raise RouterError(f"HAProxy still sends requests to released backend {backend_id} "
                                  f"({self.backend}/{server})")

    # --- counters and drains
    async def stats(self) -> RouterStats:
        adoption = self._load()
        worker, now = await self._readings()
        revisions = {}
        for pool in adoption.table.pools:
            kept = adoption.carried.get(pool.revision)
            total = kept.counters if kept is not None and kept.worker == worker else Counters()
            for server, owner in adoption.owners.items():
                if owner == pool.revision and server in now:
                    total = total.plus(_since(now[server], adoption.baselines.get(server), worker))
            revisions[pool.revision] = total
        in_flight = {backend_id: now[server].in_flight if server in now else 0
                     for backend_id, server in {**adoption.released, **adoption.slots}.items()}
        return RouterStats(worker=worker, generation=adoption.table.generation,
                           revisions=revisions, in_flight=in_flight)

    async def drained(self, backend_id: str) -> bool:
        """No request in flight to that backend's server (in the current worker: the old
        workers of a reload are the user's master's, out of turnout's sight); a released
        server found idle goes to maintenance (free again), in `config` too."""
        async with self._lock:
            adoption = self._load()
            server = adoption.slots.get(backend_id) or adoption.released.get(backend_id)
            if server is None:
                return True
            _, now = await self._readings()
            busy = now[server].in_flight if server in now else 0
            if busy or backend_id not in adoption.released:
                return busy == 0
            await self.runtime.set_server_state(self.backend, server, "maint")
            released = {b: s for b, s in adoption.released.items() if b != backend_id}
            self._save(adoption.model_copy(update={"released": released}))
            await self._write_config()
            return True

    async def set_flags(self, state: dict[str, Any], *, revision: int,
                        evaluate: list[str] | None = None, header: str | None = None) -> None:
        raise NotSupported(self.kind, Capability.FLAGS)
