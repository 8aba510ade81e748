"""`HaproxyRouter`: the `Router` seam over an HAProxy that turnout starts and steers.

HAProxy carries the requests; turnout only steers it through its runtime API. Each revision
of the table gets one of the service's pool backends (`<service>_p0..p3`, kept while the
revision stays in the table) and each of its backends one pre-declared server slot of that
pool (`set server ... addr`, then `state ready`). Slots no longer in the table are set to
`drain` (no new request, those in progress finish) and to `maint` once `drained` finds no
request in flight there, which frees them again. Which pool takes which request is the Lua's
(`lua/turnout.lua`), from the map entries `maps.entries` computes; they are swapped
atomically (`prepare map` / `add map` / `commit map`).

`apply` acts, then reads everything back, and returns only once HAProxy carries it; then it
writes the same into haproxy.cfg, the map file and `table.json` (the table and where each
revision and backend sits), so a reload or a restart keeps the routing and a restarted
control plane finds it. A change HAProxy can take only from its file (timeouts, limits) is
made by a reload, which drops no connection (`process.HaproxyProcess.reload`).

`stats` reads each pool backend's counters (`show stat`) and the Lua's latency histograms,
keyed back to revisions. HAProxy's counters start again at zero with each worker (a reload,
a restart): `RouterStats.worker` says which worker counted, and `Counters.minus` takes a
reading that went down as a fresh start. A pool taken over by another revision carries on
counting, so the reading when it changed hands is kept and subtracted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from turnout import procs
from turnout.addresses import join_host_port, split_host_port
from turnout.errors import RouterError
from turnout.files import write_atomic
from turnout.routers.base import (
    LATENCY_BOUNDS,
    Capability,
    Counters,
    NotSupported,
    RouterInfo,
    RouterStats,
)
from turnout.routers.haproxy import config, maps
from turnout.routers.haproxy.process import HaproxyProcess
from turnout.routers.haproxy.runtime import ServerState, StatRow, parse_stat
from turnout.routers.table import RoutingTable
from turnout.spec import Spec
from turnout.statedir import StateDir

TABLE_FILE = "table.json"
START_SECONDS = 10.0
# what of a table HAProxy takes only from its file (a reload), not from its runtime API
STATIC_FIELDS = ("timeouts", "limits", "buffer_requests", "trust_forwarded")
DEFAULT_SLOTS = 8
EMPTY_LATENCY = [0] * (len(LATENCY_BOUNDS) + 1)


class NoFreeSlot(RouterError):
    """A pool has no server slot free for a backend."""


class Baseline(BaseModel):
    """A pool backend's counters when its revision took it over (and the worker that had them)."""

    model_config = ConfigDict(extra="forbid")
    worker: str = ""
    counters: Counters = Field(default_factory=Counters)


class Placement(BaseModel):
    """What `table.json` holds: the table in effect, where its revisions and backends sit,
    the addresses HAProxy listens on (a port 0 chosen once), and the pools' baselines."""

    model_config = ConfigDict(extra="forbid")
    table: RoutingTable = Field(default_factory=RoutingTable)
    listen: str = ""
    preview_listen: str | None = None
    pools: dict[str, int] = Field(default_factory=dict)  # revision -> pool index
    slots: dict[str, tuple[int, int]] = Field(default_factory=dict)  # backend id -> (pool, slot)
    released: dict[str, tuple[int, int]] = Field(default_factory=dict)  # draining backends
    baselines: dict[int, Baseline] = Field(default_factory=dict)


class HaproxyRouter:
    """An HAProxy for one service, in its own folder (config, sockets, maps, table)."""

    kind = "haproxy"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.WEIGHTS, Capability.STICKINESS, Capability.MATCH, Capability.PREVIEW,
         Capability.DRAIN, Capability.LATENCY}
    )

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> HaproxyRouter:
        """The spec's HAProxy, in the state folder's `haproxy/`."""
        health = config.Health(path=spec.health.path, interval=float(spec.health.interval),
                               timeout=float(spec.health.timeout))
        return cls(state.path / "haproxy", service=spec.service, listen=spec.listen,
                   preview_listen=spec.preview_listen(), health=health,
                   slots=max(DEFAULT_SLOTS, 2 * spec.instances))

    def __init__(self, folder: Path, *, service: str, listen: str, preview_listen: str | None,
                 health: config.Health | None = None, slots: int = DEFAULT_SLOTS,
                 binary: str = "haproxy") -> None:
        self.folder = folder
        self.service = service
        self.listen = listen
        self.preview_listen = preview_listen
        self.health = health or config.Health()
        self.slot_count = slots
        self.process = HaproxyProcess(folder, binary=binary)
        self.runtime = self.process.runtime
        self.table_path = folder / TABLE_FILE
        self.map_path = folder / maps.MAP_FOLDER / maps.MAP_FILE
        self._lock = asyncio.Lock()

    # --- what is saved
    def _load(self) -> Placement:
        try:
            return Placement.model_validate_json(self.table_path.read_bytes())
        except FileNotFoundError:
            return Placement()
        except (OSError, ValidationError) as exc:
            raise RouterError(f"HAProxy router: unreadable {self.table_path}: {exc}") from exc

    def _layout(self, placement: Placement) -> config.Layout:
        table = placement.table
        by_pool = {index: revision for revision, index in placement.pools.items()}
        at = {where: backend for backend, where in placement.slots.items()}
        addresses = {b.id: b.address for p in table.pools for b in p.backends}
        pools = []
        for index in range(config.POOLS):
            slots = tuple(
                config.Slot(addresses[at[index, j]], "ready") if (index, j) in at else config.Slot()
                for j in range(self.slot_count)
            )
            revision = by_pool.get(index)
            pool = table.pool(revision) if revision is not None else None
            pools.append(config.Pool(
                slots=slots, revision=revision, weight=pool.weight if pool is not None else 0,
                lines=tuple(maps.backend_lines(config.backend_name(self.service, index)))))
        service = config.Service(
            name=self.service, listen=placement.listen, preview_listen=placement.preview_listen,
            pools=tuple(pools), health=self.health,
            frontend_lines=tuple(maps.frontend_lines(self.service)),
            preview_lines=tuple(maps.frontend_lines(self.service, preview=True)),
        )
        return config.Layout(
            folder=self.folder.resolve(), services=(service,), timeouts=table.timeouts,
            limits=table.limits, buffer_requests=table.buffer_requests,
            trust_forwarded=table.trust_forwarded,
            global_lines=tuple(maps.lua_global_lines(str(self.folder.resolve()))),
        )

    def _entries(self, placement: Placement) -> dict[str, str]:
        backends = {r: config.backend_name(self.service, i) for r, i in placement.pools.items()}
        return maps.entries(self.service, placement.table, backends)

    def _write(self, placement: Placement, *, lua: bool = False) -> None:
        """Write haproxy.cfg, the map and table.json (and, with `lua`, the Lua program)."""
        try:
            if lua:
                write_atomic(self.folder / maps.LUA_FILE, maps.lua_source().encode())
            text = config.render(self._layout(placement))
            write_atomic(self.map_path, maps.map_text(self._entries(placement)).encode())
            write_atomic(self.process.config_path, text.encode())
            write_atomic(self.table_path, placement.model_dump_json().encode())
        except (OSError, ValueError) as exc:
            raise RouterError(f"cannot write HAProxy's files in {self.folder}: {exc}") from exc

    def _needs_reload(self, placement: Placement) -> bool:
        """Whether the file on disk differs from `placement`'s beyond what the runtime API
        changes (slot addresses and states): timeouts, limits, the number of slots."""
        try:
            before = self.process.config_path.read_text()
        except OSError:
            return True
        try:
            return _static(before) != _static(config.render(self._layout(placement)))
        except ValueError as exc:
            raise RouterError(f"HAProxy router cannot write this table: {exc}") from exc

    # --- the process
    def pid(self) -> int | None:
        return self.process.pid()

    async def ensure_running(self) -> None:
        """Start HAProxy unless it runs, from what table.json holds (a port 0 is chosen now
        and kept); RouterError if it cannot start, or runs but does not answer."""
        async with self._lock:
            if self.pid() is not None:
                if await self._answers(within=START_SECONDS):
                    return
                raise RouterError(f"HAProxy (pid {self.pid()}) runs but its runtime API at "
                                  f"{self.process.admin_socket} does not answer")
            placement = self._load()
            placement = placement.model_copy(update={
                "listen": _chosen(self.listen, placement.listen),
                "preview_listen": _chosen(self.preview_listen, placement.preview_listen)
                if self.preview_listen else None,
                "baselines": {},
            })
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write(placement, lua=True)
            await self.process.start()

    async def _answers(self, *, within: float = 0.0) -> bool:
        """Whether the runtime API answers (trying again for `within` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await self.runtime.command("show info")
            except RouterError:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.05)
            else:
                return True

    async def stop(self) -> None:
        try:
            await self.process.stop()
        except PermissionError as exc:
            raise RouterError(f"not allowed to stop HAProxy (pid {self.pid()})") from exc

    async def describe(self) -> RouterInfo:
        pid = self.pid()
        try:
            placement = self._load()
        except RouterError:
            placement = Placement()
        details = {"pid": str(pid)} if pid is not None else {}
        details |= {"admin": str(self.process.admin_socket), "log": str(self.process.log_path)}
        return RouterInfo(kind=self.kind, running=pid is not None,
                          listen=placement.listen or self.listen,
                          preview=placement.preview_listen or self.preview_listen, details=details)

    async def aclose(self) -> None:
        """Nothing to let go of: every command has its own connection."""

    def _running(self) -> None:
        if self.pid() is None:
            raise RouterError(f"the HAProxy router in {self.folder} is not running")

    # --- tables
    async def table(self) -> RoutingTable | None:
        self._running()
        table = self._load().table
        return table if (table.pools or table.generation) else None

    async def apply(self, table: RoutingTable) -> None:
        """Put `table` in effect: slots filled, map swapped, slots left drained; read back;
        then written to the files. A change only the file holds (timeouts, limits, more
        slots) is put in effect first, by a reload with the routing HAProxy already has."""
        async with self._lock:
            self._running()
            before = self._load()
            if table.generation < before.table.generation:
                raise RouterError(f"HAProxy router has generation {before.table.generation}, "
                                  f"newer than {table.generation}")
            settings = {k: getattr(table, k) for k in STATIC_FIELDS}
            interim = before.model_copy(update={"table": before.table.model_copy(update=settings)})
            if self._needs_reload(interim):
                self._write(interim)
                await self.process.reload()
            servers = {(s.backend, s.server): s for s in await self.runtime.servers_state()}
            try:
                placement = self._place(before, table, servers)
            except NoFreeSlot:
                await self._reclaim(before)
                servers = {(s.backend, s.server): s for s in await self.runtime.servers_state()}
                placement = self._place(before, table, servers)
            placement = await self._baselines(before, placement)
            await self._fill(placement, servers)
            await self._swap(placement)
            await self._release(placement, servers)
            await self._verify(placement)
            self._write(placement)

    def _place(self, before: Placement, table: RoutingTable,
               servers: dict[tuple[str, str], ServerState]) -> Placement:
        """Where each revision and backend of `table` goes: where it was, else a free pool
        (first one that no revision left a moment ago and no slot drains in) and free slots
        (in maintenance)."""
        revisions = [p.revision for p in table.pools]
        pools = {r: i for r, i in before.pools.items() if r in revisions}
        released = {b: where for b, where in before.released.items()  # drop the drained ones
                    if self._server(servers, where) not in (None, "maint")}
        busy = set(before.pools.values()) | {where[0] for where in released.values()}
        for revision in revisions:
            if revision in pools:
                continue
            free = [i for i in range(config.POOLS) if i not in pools.values()]
            if not free:
                raise RouterError(f"HAProxy router: more than {config.POOLS} revisions in one table")
            pools[revision] = next((i for i in free if i not in busy), free[0])
        slots: dict[str, tuple[int, int]] = {}
        for pool in table.pools:
            index = pools[pool.revision]
            for backend in pool.backends:
                kept = before.slots.get(backend.id) or released.get(backend.id)
                if kept is not None and kept[0] == index and kept not in slots.values():
                    slots[backend.id] = kept
        for pool in table.pools:
            index = pools[pool.revision]
            for backend in pool.backends:
                if backend.id not in slots:
                    slots[backend.id] = self._free_slot(index, slots, released, servers)
                released.pop(backend.id, None)
        for backend_id, where in before.slots.items():
            if backend_id not in slots and where not in slots.values():
                released[backend_id] = where
        return Placement(table=table, listen=before.listen, preview_listen=before.preview_listen,
                         pools=pools, slots=slots, released=released, baselines=before.baselines)

    def _free_slot(self, pool: int, taken: dict[str, tuple[int, int]],
                   released: dict[str, tuple[int, int]],
                   servers: dict[tuple[str, str], ServerState]) -> tuple[int, int]:
        used = set(taken.values()) | set(released.values())
        backend = config.backend_name(self.service, pool)
        for j in range(self.slot_count):
            state = servers.get((backend, config.slot_name(j)))
            if (pool, j) not in used and (state is None or state.state == "maint"):
                return pool, j
        raise NoFreeSlot(f"HAProxy router: no free server slot left in {backend} "
                          f"({self.slot_count} slots, some still draining)")

    async def _reclaim(self, placement: Placement) -> None:
        """Released slots with no request in flight go to maintenance (free again), as
        `drained` would set them: nobody asks `drained` about a blue-green warm fleet, which
        the tidy stops once its rollback window has ended."""
        for where in placement.released.values():
            if await self._in_flight(where) == 0:
                await self.runtime.set_server_state(*self._names(where), "maint")

    def _server(self, servers: dict[tuple[str, str], ServerState], where: tuple[int, int]) -> str | None:
        """The administrative state of slot `where` as last read, None if HAProxy lacks it."""
        state = servers.get(self._names(where))
        return None if state is None else state.state

    def _names(self, where: tuple[int, int]) -> tuple[str, str]:
        return config.backend_name(self.service, where[0]), config.slot_name(where[1])

    async def _fill(self, placement: Placement, servers: dict[tuple[str, str], ServerState]) -> None:
        """Point each backend's slot at it and make it ready (what already is, stays)."""
        addresses = {b.id: b.address for p in placement.table.pools for b in p.backends}
        for backend_id, where in placement.slots.items():
            host, port = await _resolved(addresses[backend_id])
            backend, slot = self._names(where)
            now = servers.get((backend, slot))
            if now is None:
                raise RouterError(f"HAProxy has no server {backend}/{slot}: its configuration is "
                                  f"not this router's ({self.process.config_path})")
            if (now.host, now.port) != (host, port):
                await self.runtime.set_server_address(backend, slot, host, port)
            if now.state != "ready" or (now.host, now.port) != (host, port):
                await self.runtime.set_server_state(backend, slot, "ready")

    async def _swap(self, placement: Placement) -> None:
        entries = self._entries(placement)
        if dict(await self.runtime.map_entries(self._map_name())) != entries:
            await self.runtime.swap_map(self._map_name(), entries)

    def _map_name(self) -> str:
        """The map's name as HAProxy knows it: the path the configuration gave the Lua."""
        return f"{self.folder.resolve()}/{maps.MAP_FOLDER}/{maps.MAP_FILE}"

    async def _release(self, placement: Placement, servers: dict[tuple[str, str], ServerState]) -> None:
        """Slots of backends gone from the table take no new request (drain)."""
        for where in placement.released.values():
            if self._server(servers, where) == "ready":
                await self.runtime.set_server_state(*self._names(where), "drain")

    async def _verify(self, placement: Placement) -> None:
        """Read back what `apply` set: every backend's slot ready at its address, released
        slots out of rotation, the map's entries; RouterError for what HAProxy does not carry."""
        servers = {(s.backend, s.server): s for s in await self.runtime.servers_state()}
        addresses = {b.id: b.address for p in placement.table.pools for b in p.backends}
        for backend_id, where in placement.slots.items():
            host, port = await _resolved(addresses[backend_id])
            now = servers.get(self._names(where))
            if now is None or now.state != "ready" or (now.host, now.port) != (host, port):
                raise RouterError(f"HAProxy does not carry backend {backend_id} in "
                                  f"{'/'.join(self._names(where))}: {now}")
        for backend_id, where in placement.released.items():
            if self._server(servers, where) == "ready":
                raise RouterError(f"HAProxy still sends requests to released backend {backend_id}")
        if dict(await self.runtime.map_entries(self._map_name())) != self._entries(placement):
            raise RouterError(f"HAProxy's map {self._map_name()} does not hold the table's entries")

    # --- counters and drains
    async def _readings(self) -> tuple[str, dict[str, Counters], list[StatRow]]:
        """The worker's pid, the raw counters of each pool backend, and every stat row."""
        info = await self.runtime.command("show info")
        worker = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("Pid:")), "")
        rows = await self.runtime.stat()
        try:
            histograms = maps.parse_stats(await self.runtime.command(maps.STATS_COMMAND))
        except ValueError as exc:
            raise RouterError(f"HAProxy's Lua answered {maps.STATS_COMMAND!r} unreadably: {exc}") from exc
        raw = {}
        for row in rows:
            if row.name == "BACKEND" and row.proxy.startswith(f"{self.service}_p"):
                raw[row.proxy] = Counters(
                    requests=row.number("req_tot"), responses_5xx=row.number("hrsp_5xx"),
                    connection_errors=row.number("srv_abrt"),
                    latency=histograms.get(row.proxy, EMPTY_LATENCY),
                    in_flight=row.number("scur") + row.number("qcur"),
                )
        return worker, raw, rows

    async def _baselines(self, before: Placement, placement: Placement) -> Placement:
        """Keep the counters of each pool that changes hands, to count its new revision from."""
        owners = {i: r for r, i in before.pools.items()}
        changed = [i for r, i in placement.pools.items() if owners.get(i) != r]
        if not changed:
            return placement
        worker, raw, _ = await self._readings()
        baselines = dict(placement.baselines)
        for index in changed:
            counters = raw.get(config.backend_name(self.service, index), Counters())
            baselines[index] = Baseline(worker=worker, counters=counters.model_copy(update={"in_flight": 0}))
        return placement.model_copy(update={"baselines": baselines})

    async def stats(self) -> RouterStats:
        self._running()
        placement = self._load()
        worker, raw, rows = await self._readings()
        revisions = {}
        for revision, index in placement.pools.items():
            counters = raw.get(config.backend_name(self.service, index), Counters())
            baseline = placement.baselines.get(index)
            if baseline is not None and baseline.worker == worker:
                now = counters.in_flight
                counters = counters.minus(baseline.counters).model_copy(update={"in_flight": now})
            revisions[revision] = counters
        servers = {(r.proxy, r.name): r for r in rows if r.is_server}
        in_flight = {}
        for backend_id, where in {**placement.released, **placement.slots}.items():
            row = servers.get(self._names(where))
            in_flight[backend_id] = 0 if row is None else row.number("scur") + row.number("qcur")
        return RouterStats(worker=worker, generation=placement.table.generation,
                           revisions=revisions, in_flight=in_flight, unrouted=self._unrouted(rows))

    def _unrouted(self, rows: list[StatRow]) -> Counters:
        """Requests the frontends answered without a pool (none took them: 503)."""
        mine = {self.service, f"{self.service}_preview"}
        front = [r for r in rows if r.name == "FRONTEND" and r.proxy in mine]
        back = [r for r in rows if r.name == "BACKEND" and r.proxy.startswith(f"{self.service}_p")]
        requests = sum(r.number("req_tot") for r in front) - sum(r.number("req_tot") for r in back)
        errors = sum(r.number("hrsp_5xx") for r in front) - sum(r.number("hrsp_5xx") for r in back)
        return Counters(requests=max(0, requests), responses_5xx=max(0, min(requests, errors)))

    async def drained(self, backend_id: str) -> bool:
        """No request in flight to that backend's slot in any worker, old ones included; a
        released slot found drained goes to maintenance (free again)."""
        self._running()
        async with self._lock:
            placement = self._load()
            where = placement.slots.get(backend_id) or placement.released.get(backend_id)
            if where is None:
                return True
            busy = await self._in_flight(where)
            if busy or backend_id not in placement.released:
                return busy == 0
            await self.runtime.set_server_state(*self._names(where), "maint")
            released = {b: w for b, w in placement.released.items() if b != backend_id}
            write_atomic(self.table_path, placement.model_copy(update={"released": released})
                         .model_dump_json().encode())
            return True

    async def _in_flight(self, where: tuple[int, int]) -> int:
        backend, slot = self._names(where)
        total = 0
        for worker in await self.process.workers():
            answer = await self.process.master.command(f"@!{worker.pid} show stat")
            try:
                rows = parse_stat(answer)
            except ValueError:
                continue  # a worker that left between the two commands
            total += sum(r.number("scur") + r.number("qcur") for r in rows
                         if (r.proxy, r.name) == (backend, slot))
        return total

    async def set_flags(self, state: dict[str, Any], *, revision: int,
                        evaluate: list[str] | None = None, header: str | None = None) -> None:
        raise NotSupported(self.kind, Capability.FLAGS)


def _static(text: str) -> list[str]:
    """haproxy.cfg without what the runtime API changes: a slot's address and state (its
    name stays: the number of slots is the file's), a pool's comment."""
    kept = []
    for line in text.splitlines():
        if line.startswith("    server "):
            kept.append(" ".join(line.split()[:2]))
        elif not line.startswith("    # revision "):
            kept.append(line)
    return kept


def _chosen(address: str, kept: str | None) -> str:
    """`address`; with port 0, the address chosen before (`kept`) or one with a port free
    now (HAProxy binds no port 0)."""
    host, port = split_host_port(address, any_port=True)
    if port:
        return address
    if kept:
        return kept
    return join_host_port(host, procs.free_port(host))


async def _resolved(address: str) -> tuple[str, int]:
    """(IP, port) of host:port: HAProxy's `set server addr` takes no name."""
    host, port = split_host_port(address)
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RouterError(f"cannot resolve backend host {host!r}: {exc}") from exc
    return str(found[0][4][0]), port
