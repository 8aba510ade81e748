"""`BuiltinRouter`: the `Router` seam over turnout's own proxy process.

It talks to the proxy's admin API on `DIR/admin.sock` with httpx and turns every socket,
HTTP and decoding error into `RouterError`. It also manages the process: `ensure_running`
starts the proxy detached (own session, output to `DIR/proxy.log`) so it outlives the CLI,
and `stop` ends it (SIGTERM, then SIGKILL of its process group). `set_flags` makes the proxy
evaluate flags per request (see `turnout.routers.proxy.flags`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from turnout.errors import RouterError
from turnout.routers.base import RouterStats
from turnout.routers.table import RoutingTable

ADMIN_SOCKET = "admin.sock"
PID_FILE = "proxy.pid"
LOG_FILE = "proxy.log"
START_SECONDS = 10.0
STOP_SECONDS = 10.0
REQUEST_SECONDS = 10.0

_M = TypeVar("_M", RoutingTable, RouterStats)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> bool:
    """True if `pid` is our child and has exited (it is then reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _alive(pid)
    return done == pid


def _spawn(argv: list[str], log_path: Path) -> int:
    """Start `argv` in its own session with output appended to `log_path`; return its pid."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), flags, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class BuiltinRouter:
    """The builtin proxy for one state directory."""

    def __init__(self, state_dir: Path, *, listen: str, preview_listen: str | None) -> None:
        self.state_dir = state_dir
        self.listen = listen
        self.preview_listen = preview_listen
        self.socket_path = state_dir / ADMIN_SOCKET
        self.pid_path = state_dir / PID_FILE
        self.log_path = state_dir / LOG_FILE
        self._client: httpx.AsyncClient | None = None

    # --- the admin API
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
            self._client = httpx.AsyncClient(
                transport=transport, base_url="http://turnout-proxy", timeout=REQUEST_SECONDS
            )
        return self._client

    async def _call(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        try:
            response = await self._http().request(method, path, content=body)
        except httpx.HTTPError as exc:
            raise RouterError(f"builtin router at {self.socket_path} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise RouterError(
                f"builtin router refused {method} {path}: {response.status_code} {response.text}"
            )
        return response

    async def apply(self, table: RoutingTable) -> None:
        response = await self._call("PUT", "/table", table.model_dump_json().encode())
        in_effect = self._parse(RoutingTable, response)
        if in_effect.generation != table.generation:
            raise RouterError(
                f"builtin router has generation {in_effect.generation}, not {table.generation}"
            )

    async def table(self) -> RoutingTable | None:
        table = self._parse(RoutingTable, await self._call("GET", "/table"))
        return table if (table.pools or table.generation) else None

    async def stats(self) -> RouterStats:
        return self._parse(RouterStats, await self._call("GET", "/stats"))

    async def drained(self, backend_id: str) -> bool:
        return (await self.stats()).in_flight.get(backend_id, 0) == 0

    async def set_flags(self, state: dict[str, Any], *, evaluate: list[str], header: str,
                        revision: int) -> None:
        """Evaluate `evaluate` (flags of the Unleash `state` document) per request's user key,
        forward the results in `header` and count cohorts; in effect (and saved) on return.

        `revision` is the flag store's revision of `state`: the proxy refuses (409, a
        RouterError here) one older than the revision in effect, so a slow push never
        undoes a newer one."""
        body = json.dumps({"state": state, "revision": revision, "evaluate": evaluate,
                           "header": header}).encode()
        in_effect = self._json(await self._call("PUT", "/flags", body))
        if (in_effect.get("evaluate") != evaluate or in_effect.get("header") != header
                or in_effect.get("revision") != revision):
            raise RouterError(f"builtin router took other flag settings than sent: {in_effect}")

    async def flags(self) -> dict[str, Any]:
        """The flag settings in effect: `{"state", "revision", "evaluate", "header"}`."""
        return self._json(await self._call("GET", "/flags"))

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise RouterError(f"builtin router sent unreadable JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RouterError("builtin router sent JSON that is not an object")
        return data

    async def health(self) -> dict[str, object]:
        """The worker's id and pid and the addresses it really listens on (port 0 resolved)."""
        return self._json(await self._call("GET", "/healthz"))

    async def healthy(self) -> bool:
        try:
            response = await self._http().get("/healthz", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @staticmethod
    def _parse(model: type[_M], response: httpx.Response) -> _M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise RouterError(f"builtin router sent an unreadable {model.__name__}: {exc}") from exc

    # --- the process
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    async def ensure_running(self) -> None:
        """Start the proxy unless it already answers; raise RouterError if it cannot start."""
        if self.pid() is not None and await self.healthy():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "turnout.routers.proxy", "--listen", self.listen]
        if self.preview_listen:
            argv += ["--preview-listen", self.preview_listen]
        argv += ["--state-dir", str(self.state_dir)]
        try:
            pid = _spawn(argv, self.log_path)
        except OSError as exc:
            raise RouterError(f"cannot start the builtin router: {exc}") from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while loop.time() < deadline:
            if _reap(pid):
                break
            if await self.healthy():
                return
            await asyncio.sleep(0.05)
        raise RouterError(
            f"builtin router did not start (log {self.log_path}):\n{_log_tail(self.log_path)}"
        )

    async def stop(self) -> None:
        """SIGTERM the proxy, wait for it to drain, SIGKILL its process group if it lingers."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        while loop.time() < deadline:
            if _reap(pid):
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
