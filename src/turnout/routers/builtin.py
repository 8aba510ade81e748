"""`BuiltinRouter`: the `Router` seam over turnout's own proxy process.

It talks to the proxy's admin API on `DIR/admin.sock` with httpx and turns every socket,
HTTP and decoding error into `RouterError`. It also manages the process: `ensure_running`
starts the proxy detached (own session, output to `DIR/proxy.log`) so it outlives the CLI,
with a clean environment (`ROUTER_ENV`: no tokens or credentials of the deployer), and
`stop` ends it (SIGTERM, then SIGKILL of its process group). The proxy names itself in
`DIR/proxy.pid` by pid, start time and boot id; a pid whose process started at another
time (a reused pid) is never signalled. `set_flags` makes the proxy
evaluate flags per request (see `turnout.routers.proxy.flags`). It has every capability
of `turnout.routers.base.Capability`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import ValidationError

from turnout import procs
from turnout.errors import RouterError
from turnout.routers.base import Capability, RouterHasNewer, RouterInfo, RouterStats
from turnout.routers.table import RoutingTable
from turnout.spec import INHERIT_ENV, Spec
from turnout.statedir import RouterFiles, StateDir

START_SECONDS = 10.0
STOP_SECONDS = 10.0
REQUEST_SECONDS = 10.0

_M = TypeVar("_M", RoutingTable, RouterStats)
# What the proxy takes from the environment of the turnout command that starts it: what an
# instance gets by default, what Python needs to find turnout, and the proxy's own settings.
ROUTER_ENV = (*INHERIT_ENV, "TMPDIR", "PYTHONPATH", "PYTHONHOME")
ROUTER_ENV_PREFIX = "TURNOUT_PROXY_"


def router_env(source: dict[str, str] | None = None) -> dict[str, str]:
    """The proxy's whole environment, taken from `source` (default: this process's)."""
    own = dict(os.environ) if source is None else source
    names = [*ROUTER_ENV, *sorted(n for n in own if n.startswith(ROUTER_ENV_PREFIX))]
    return procs.child_env(names, {}, source=own)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class BuiltinRouter:
    """The builtin proxy for one state directory."""

    kind = "builtin"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> BuiltinRouter:
        """The spec's router, in the state folder's `router/` (for `turnout.wiring`)."""
        return cls(state.router.path, listen=spec.listen, preview_listen=spec.preview_listen())

    def __init__(self, state_dir: Path, *, listen: str, preview_listen: str | None) -> None:
        self.state_dir = state_dir
        self.listen = listen
        self.preview_listen = preview_listen
        files = RouterFiles(state_dir)
        self.socket_path = files.admin_socket
        self.pid_path = files.pid_file
        self.log_path = files.log
        self._client: httpx.AsyncClient | None = None

    # --- the admin API
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
            self._client = httpx.AsyncClient(
                transport=transport, base_url="http://turnout-proxy", timeout=REQUEST_SECONDS
            )
        return self._client

    async def _send(self, method: str, path: str, body: bytes | None = None, *,
                    within: float = REQUEST_SECONDS) -> httpx.Response:
        try:
            return await self._http().request(method, path, content=body, timeout=within)
        except httpx.TimeoutException as exc:
            raise RouterError(f"builtin router at {self.socket_path} timed out: no answer to "
                              f"{method} {path} within {within:g}s") from exc
        except httpx.HTTPError as exc:
            raise RouterError(f"builtin router at {self.socket_path} unreachable: "
                              f"{exc or type(exc).__name__}") from exc

    async def _call(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        return self._ok(await self._send(method, path, body), method, path)

    @staticmethod
    def _ok(response: httpx.Response, method: str, path: str) -> httpx.Response:
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

    async def set_flags(self, state: dict[str, Any], *, revision: int,
                        evaluate: list[str] | None = None, header: str | None = None) -> None:
        """Evaluate `evaluate` (flags of the Unleash `state` document) per request's user key,
        forward the results in `header` and count cohorts; in effect (and saved) on return.
        Either left out keeps the proxy's.

        `revision` is the flag store's revision of `state`: the proxy refuses (409,
        `RouterHasNewer` here) one older than the revision in effect, so a slow push never
        undoes a newer one."""
        sent: dict[str, Any] = {"state": state, "revision": revision}
        if evaluate is not None:
            sent["evaluate"] = evaluate
        if header is not None:
            sent["header"] = header
        response = await self._send("PUT", "/flags", json.dumps(sent).encode())
        if response.status_code == 409:
            held = self._held_revision(response)
            raise RouterHasNewer(f"builtin router at {self.socket_path} refused the flags (409): "
                                 f"it holds flag revision {held}, newer than {revision}", held)
        in_effect = self._json(self._ok(response, "PUT", "/flags"))
        if any(in_effect.get(key) != value for key, value in sent.items() if key != "state"):
            raise RouterError(f"builtin router took other flag settings than sent: {in_effect}")

    def _held_revision(self, response: httpx.Response) -> int:
        """The flag revision a 409 says the proxy holds."""
        try:
            held = response.json().get("revision")
        except (ValueError, AttributeError):
            held = None
        if isinstance(held, bool) or not isinstance(held, int):
            raise RouterError(f"builtin router refused the flags: 409 {response.text.strip()}")
        return held

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
    def _identity(self) -> tuple[int, float] | None:
        """(pid, start time) of the proxy the pid file names, if that very process runs."""
        try:
            data = json.loads(self.pid_path.read_text())
            if isinstance(data, int):
                return self._legacy_identity(data)
            pid, started, boot = int(data["pid"]), float(data["started"]), str(data["boot_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: nothing to trust
        if boot != procs.boot_id() or not procs.is_running(pid, started):
            return None
        return pid, started

    def _legacy_identity(self, pid: int) -> tuple[int, float] | None:
        """A bare pid (written by an older turnout) is trusted only if that process is this
        directory's proxy by its command line; its start time is then read once, here."""
        argv = procs.cmdline(pid)
        if argv is None or "turnout.routers.proxy" not in argv:
            return None
        if not {str(self.state_dir), str(self.state_dir.resolve())} & set(argv):
            return None
        started = procs.start_ticks(pid)
        return None if started is None else (pid, float(started))

    def pid(self) -> int | None:
        """The running proxy's pid, or None (no pid file, or its process is gone or another)."""
        found = self._identity()
        return None if found is None else found[0]

    async def describe(self) -> RouterInfo:
        """Kind, pid, admin socket and log; the addresses it really listens on while it runs."""
        pid = self.pid()
        listen, preview = self.listen, self.preview_listen
        if pid is not None:
            try:
                health = self._json(self._ok(await self._send("GET", "/healthz", within=2.0),
                                             "GET", "/healthz"))
            except RouterError:
                pass  # running but not answering: the configured addresses will do
            else:
                listen = str(health.get("listen") or listen)
                preview = str(health.get("preview_listen") or preview) if preview else None
        details = {"pid": str(pid)} if pid is not None else {}
        details |= {"admin": str(self.socket_path), "log": str(self.log_path)}
        return RouterInfo(kind=self.kind, running=pid is not None, listen=listen,
                          preview=preview, details=details)

    async def ensure_running(self) -> None:
        """Start the proxy unless it already answers; raise RouterError if it cannot start."""
        if self.pid() is not None and await self.healthy():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "turnout.routers.proxy", "--listen", self.listen]
        if self.preview_listen:
            argv += ["--preview-listen", self.preview_listen]
        argv += ["--state-dir", str(self.state_dir.resolve())]
        try:
            pid = procs.spawn(argv, cwd=self.log_path.parent, env=router_env(), log=self.log_path)
        except OSError as exc:
            raise RouterError(f"cannot start the builtin router: {exc}") from exc
        started = procs.start_ticks(pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while loop.time() < deadline:
            if not procs.is_running(pid, None):
                break  # it exited (and was reaped)
            if await self.healthy():
                return
            await asyncio.sleep(0.05)
        if started is not None:  # running but never healthy (say, a worker that keeps dying)
            procs.signal_group(pid, started, signal.SIGKILL)
        raise RouterError(
            f"builtin router did not start (log {self.log_path}):\n{_log_tail(self.log_path)}"
        )

    async def stop(self) -> None:
        """SIGTERM the proxy, wait for it to drain, SIGKILL its process group if it lingers.

        Only the very process the pid file names (same pid, start time and boot) is signalled.
        """
        found = self._identity()
        if found is None:
            return
        pid, started = found
        try:
            if not procs.signal_process(pid, started, signal.SIGTERM):
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_SECONDS
            while loop.time() < deadline:
                if not procs.is_running(pid, started):
                    return
                await asyncio.sleep(0.05)
            procs.signal_group(pid, started, signal.SIGKILL)
        except PermissionError as exc:
            raise RouterError(f"not allowed to stop the builtin router (pid {pid})") from exc
        for _ in range(100):  # SIGKILL takes effect at once; wait up to 5 s for it to be gone
            if not procs.is_running(pid, started):
                return
            await asyncio.sleep(0.05)
