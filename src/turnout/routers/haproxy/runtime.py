"""HAProxy's runtime API (the CLI of its `stats socket`) over a UNIX socket, with typed answers.

`Runtime` sends one command per connection: it writes the command line (and a payload, if
any), closes its side, and reads the answer to the end, all within a timeout. Every failure
(no socket, a refused connection, a timeout, an answer that is an error message) is a
`RouterError` naming the socket and the command, so nothing of the socket leaks past it.

The same client serves the master CLI of master-worker mode (`show proc`, `reload`); its
answers end only when the client closes its side, hence the half-close after each command.

Answers are parsed into frozen records: `show servers state` (format 1, space separated,
its header line names the columns), `show stat` (CSV whose first line, after `# `, names
the columns; the order past the static fields is not guaranteed, so columns are looked up by
name), `show map` (the maps, or one map's entries) and `show proc`. `swap_map` replaces a
map's entries atomically: `prepare map` allocates a version, `add map @<ver>` fills it (in
payloads small enough for HAProxy's 16 kB buffers) and `commit map @<ver>` makes it current.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from turnout.errors import RouterError

TIMEOUT_SECONDS = 5.0
MAX_ANSWER = 64 * 1024 * 1024  # bytes: far more than `show stat` of thousands of servers
PAYLOAD_BYTES = 8192  # of one `add map` payload: HAProxy reads a command into its 16 kB buffer

# `srv_admin_state` bits (management guide, `show servers state`). CMAINT only remembers that
# the configuration said `disabled`: HAProxy's own "in maintenance" mask leaves it out.
ADMIN_FORCED_MAINT = 0x01
ADMIN_INHERITED_MAINT = 0x02
ADMIN_CONFIG_MAINT = 0x04
ADMIN_FORCED_DRAIN = 0x08
ADMIN_INHERITED_DRAIN = 0x10
ADMIN_RESOLUTION_MAINT = 0x20
ADMIN_MAINT = ADMIN_FORCED_MAINT | ADMIN_INHERITED_MAINT | ADMIN_RESOLUTION_MAINT
ADMIN_DRAIN = ADMIN_FORCED_DRAIN | ADMIN_INHERITED_DRAIN
# `srv_op_state`
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3

ServerAdmin = Literal["ready", "drain", "maint"]


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server of `show servers state`."""

    backend: str
    server: str
    host: str
    port: int
    operational: int  # OP_*
    admin: int  # a mask of ADMIN_* bits
    weight: int  # the user-visible weight

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def state(self) -> ServerAdmin:
        """The administrative state as `set server ... state` names it."""
        if self.admin & ADMIN_MAINT:
            return "maint"
        return "drain" if self.admin & ADMIN_DRAIN else "ready"

    @property
    def up(self) -> bool:
        """Running as far as its health checks tell (whatever its administrative state)."""
        return self.operational in (OP_STARTING, OP_RUNNING)


@dataclass(frozen=True, slots=True)
class StatRow:
    """One line of `show stat`: a frontend, a backend, a server or a listener."""

    proxy: str  # pxname
    name: str  # svname: FRONTEND, BACKEND, or the server's (listener's) name
    fields: Mapping[str, str]

    def number(self, field: str) -> int:
        """A counter or gauge; 0 where HAProxy leaves it empty (not kept for this kind of row)."""
        text = self.fields.get(field, "")
        try:
            return int(text) if text else 0
        except ValueError as exc:
            raise RouterError(f"HAProxy's show stat has {field}={text!r} for {self.proxy}/{self.name}, "
                              "not a number") from exc

    def text(self, field: str) -> str:
        return self.fields.get(field, "")

    @property
    def is_server(self) -> bool:
        return self.text("type") == "2"


@dataclass(frozen=True, slots=True)
class MapInfo:
    """One map of `show map`: its id, file, current and next versions, entries of all versions."""

    id: int
    file: str
    current: int
    next: int
    entries: int


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One process of the master CLI's `show proc`."""

    pid: int
    kind: str  # master, worker, or a program's name
    reloads: int
    failed_reloads: int | None  # the master's count of failed reloads
    old: bool  # a worker of an earlier configuration, still finishing its connections


class Runtime:
    """The runtime API (or the master CLI) at `socket_path`."""

    def __init__(self, socket_path: Path, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _error(self, command: str, problem: str) -> RouterError:
        return RouterError(f"HAProxy at {self.socket_path}: {command!r} {problem}")

    async def command(self, line: str, payload: Iterable[str] = ()) -> str:
        """HAProxy's answer to one command `line` (arguments already escaped: see `word`),
        with `payload` lines after it if any."""
        if any(c in line for c in "\r\n\0"):
            raise self._error(line, "is not one line")
        lines = list(payload)
        if any(any(c in item for c in "\r\n\0") or not item for item in lines):
            raise self._error(line, "has a payload line that is empty or not one line")
        data = (f"{line} <<\n" + "".join(f"{item}\n" for item in lines) + "\n") if lines else f"{line}\n"
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(data.encode())
        except TimeoutError as exc:
            raise self._error(line, f"got no whole answer within {self.timeout:g}s") from exc
        except OSError as exc:
            raise self._error(line, f"failed: {exc.strerror or exc}") from exc

    async def _exchange(self, data: bytes) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            writer.write(data)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            answer = bytearray()
            while chunk := await reader.read(65536):
                answer += chunk
                if len(answer) > MAX_ANSWER:
                    raise OSError(f"an answer over {MAX_ANSWER} bytes")
            return answer.decode("utf-8", errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # HAProxy closing first is no error
                await writer.wait_closed()

    async def execute(self, line: str, payload: Iterable[str] = ()) -> None:
        """A command whose success is an empty answer; its answer otherwise is the error."""
        answer = (await self.command(line, payload)).strip()
        if answer:
            raise self._error(line, f"refused: {answer}")

    # --- servers
    async def servers_state(self, backend: str | None = None) -> list[ServerState]:
        line = "show servers state" + (f" {word(backend)}" if backend else "")
        answer = await self.command(line)
        try:
            return parse_servers_state(answer)
        except ValueError as exc:
            raise self._error(line, f"answered what does not parse: {exc}") from exc

    async def set_server_address(self, backend: str, server: str, host: str, port: int) -> None:
        """Point a server slot at host:port (an IP address: HAProxy resolves no name here)."""
        line = f"set server {word(backend)}/{word(server)} addr {word(host)} port {int(port)}"
        answer = (await self.command(line)).strip()
        # HAProxy tells what changed: "IP changed from ...", "no need to change the addr, ..."
        if not answer.startswith(("IP changed from", "no need to change the addr")):
            raise self._error(line, f"refused: {answer or '(no answer)'}")

    async def set_server_state(self, backend: str, server: str, state: ServerAdmin) -> None:
        await self.execute(f"set server {word(backend)}/{word(server)} state {state}")

    async def set_server_weight(self, backend: str, server: str, weight: int) -> None:
        await self.execute(f"set server {word(backend)}/{word(server)} weight {int(weight)}")

    # --- counters
    async def stat(self) -> list[StatRow]:
        answer = await self.command("show stat")
        try:
            return parse_stat(answer)
        except ValueError as exc:
            raise self._error("show stat", f"answered what does not parse: {exc}") from exc

    # --- maps
    async def maps(self) -> list[MapInfo]:
        answer = await self.command("show map")
        try:
            return parse_maps(answer)
        except ValueError as exc:
            raise self._error("show map", f"answered what does not parse: {exc}") from exc

    async def map_entries(self, map_name: str, version: int | None = None) -> list[tuple[str, str]]:
        """The entries (key, value) of a map's current version, or of `version`."""
        line = "show map " + (f"@{int(version)} " if version is not None else "") + word(map_name)
        answer = await self.command(line)
        try:
            return parse_map_entries(answer)
        except ValueError as exc:
            raise self._error(line, f"answered what does not parse: {exc}") from exc

    async def prepare_map(self, map_name: str) -> int:
        line = f"prepare map {word(map_name)}"
        answer = (await self.command(line)).strip()
        prefix = "New version created:"
        if not answer.startswith(prefix) or not answer[len(prefix):].strip().isdigit():
            raise self._error(line, f"refused: {answer or '(no answer)'}")
        return int(answer[len(prefix):])

    async def add_map(self, map_name: str, version: int, entries: Mapping[str, str]) -> None:
        """Add entries to a prepared version, in payloads that fit HAProxy's buffer. A key holds
        no whitespace (the first word of a payload line is the key); a value is one line."""
        for key, value in entries.items():
            if not key or any(c.isspace() for c in key) or any(c in value for c in "\r\n\0"):
                raise self._error(f"add map @{version} {map_name}",
                                  f"cannot take the entry {key!r} -> {value!r}")
        line = f"add map @{int(version)} {word(map_name)}"
        batch: list[str] = []
        size = 0
        for key, value in entries.items():
            item = f"{key} {value}"
            if batch and size + len(item.encode()) + 1 > PAYLOAD_BYTES:
                await self.execute(line, batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item.encode()) + 1
        if batch:
            await self.execute(line, batch)

    async def commit_map(self, map_name: str, version: int) -> None:
        await self.execute(f"commit map @{int(version)} {word(map_name)}")

    async def swap_map(self, map_name: str, entries: Mapping[str, str]) -> int:
        """Replace every entry of the map with `entries` in one step; the version committed.
        Until the commit, requests see the old entries; from it on, only the new ones."""
        version = await self.prepare_map(map_name)
        await self.add_map(map_name, version, entries)
        await self.commit_map(map_name, version)
        return version

    # --- the master CLI
    async def processes(self) -> list[ProcInfo]:
        answer = await self.command("show proc")
        try:
            return parse_proc(answer)
        except ValueError as exc:
            raise self._error("show proc", f"answered what does not parse: {exc}") from exc


def word(text: str) -> str:
    """`text` as one argument of a runtime API command: a backslash before each space,
    semicolon and backslash (HAProxy's escapes); RouterError for what no line can hold."""
    if not text or any(c in text for c in "\r\n\0"):
        raise RouterError(f"{text!r} cannot be an argument of an HAProxy command")
    escaped = []
    for c in text:
        escaped.append(f"\\{c}" if c in " \t;\\" else c)
    return "".join(escaped)


def parse_servers_state(text: str) -> list[ServerState]:
    """`show servers state` (format 1). ValueError when it is not that answer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"not format 1 of show servers state: {text[:200]!r}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise ValueError("no header line")
    names = lines[1].lstrip("#").split()
    found = []
    for line in lines[2:]:
        if line.startswith("#"):
            continue
        values = line.split()
        if len(values) != len(names):
            raise ValueError(f"{len(values)} columns, not {len(names)}: {line!r}")
        row = dict(zip(names, values, strict=True))
        found.append(ServerState(
            backend=row["be_name"], server=row["srv_name"], host=row["srv_addr"],
            port=int(row["srv_port"]), operational=int(row["srv_op_state"]),
            admin=int(row["srv_admin_state"]), weight=int(row["srv_uweight"]),
        ))
    return found


def parse_stat(text: str) -> list[StatRow]:
    """`show stat` (CSV with a `# ` header line). ValueError when it is not that answer."""
    if not text.startswith("# "):
        raise ValueError(f"no header line: {text[:200]!r}")
    rows = list(csv.reader(io.StringIO(text[2:])))
    names = rows[0]
    if names[:2] != ["pxname", "svname"]:
        raise ValueError(f"a header that does not begin with pxname,svname: {names[:4]}")
    found = []
    for values in rows[1:]:
        if not values or values == [""]:
            continue
        if len(values) != len(names):
            raise ValueError(f"{len(values)} columns, not {len(names)}")
        fields = dict(zip(names, values, strict=True))
        fields.pop("", None)  # the trailing comma
        found.append(StatRow(proxy=values[0], name=values[1], fields=fields))
    return found


def parse_maps(text: str) -> list[MapInfo]:
    """`show map` without argument. ValueError when it is not that answer."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        ident, _, rest = line.partition(" ")
        if not rest.startswith("(") or ")" not in rest:
            raise ValueError(f"a map line without its file: {line!r}")
        file = rest[1:rest.index(")")]
        numbers = dict(part.split("=", 1) for part in rest.split() if "=" in part)
        try:
            found.append(MapInfo(id=int(ident), file=file, current=int(numbers["curr_ver"]),
                                 next=int(numbers["next_ver"]), entries=int(numbers["entry_cnt"])))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"a map line without its versions: {line!r}") from exc
    return found


def parse_map_entries(text: str) -> list[tuple[str, str]]:
    """`show map <map>`: (key, value) per entry, in HAProxy's order. ValueError for an error
    message instead (an unknown map)."""
    found = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("0x"):
            raise ValueError(line.strip())
        found.append((parts[1], parts[2] if len(parts) == 3 else ""))
    return found


def parse_proc(text: str) -> list[ProcInfo]:
    """The master CLI's `show proc`. ValueError when it is not that answer."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#<PID>"):
        raise ValueError(f"no header line: {text[:200]!r}")
    found = []
    section = ""
    for line in lines[1:]:
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            continue
        parts = line.split()
        if not parts:
            continue
        failed = None
        if len(parts) > 4 and parts[3] == "[failed:":
            failed = int(parts[4].rstrip("]"))
        found.append(ProcInfo(pid=int(parts[0]), kind=parts[1], reloads=int(parts[2]),
                              failed_reloads=failed, old=section == "old workers"))
    return found
