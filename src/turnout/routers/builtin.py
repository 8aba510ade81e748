"""`BuiltinRouter`: the `Router` seam over turnout's own proxy process.

It talks to the proxy's admin API on `DIR/admin.sock` with httpx and turns every socket,
HTTP and decoding error into `RouterError`. It also manages the process, through
`turnout.routers.proxy.process`: `ensure_running` starts the proxy detached (own session,
output to `DIR/proxy.log`) so it outlives the CLI, with a clean environment, and `stop`
ends it (SIGTERM, then SIGKILL of its process group); a reused pid is never signalled.
`set_flags` makes the proxy evaluate flags per request (see `turnout.routers.proxy.flags`).
It has every capability of `turnout.routers.base.Capability`.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import ValidationError

from turnout import procs
from turnout.errors import RouterError
from turnout.routers.base import Capability, RouterHasNewer, RouterInfo, RouterStats
from turnout.routers.proxy.process import ProxyProcess
from turnout.routers.table import RoutingTable
from turnout.spec import Spec
from turnout.statedir import RouterFiles, StateDir

START_SECONDS = 10.0
REQUEST_SECONDS = 10.0

_M = TypeVar("_M", RoutingTable, RouterStats)


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
        self.process = ProxyProcess(state_dir)
        self.socket_path = RouterFiles(state_dir).admin_socket
        self.pid_path = self.process.pid_path
        self.log_path = self.process.log_path
        self.where = f"at {self.socket_path}"  # for messages
        self._client: httpx.AsyncClient | None = None

    # --- the admin API
    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
            self._client = httpx.AsyncClient(
                transport=transport, base_url="http://turnout-proxy", timeout=REQUEST_SECONDS
            )
        return self._client

    async def _send(self, method: str, path: str, body: bytes | None = None, *,
                    within: float = REQUEST_SECONDS) -> httpx.Response:
        try:
            return await (await self._http()).request(method, path, content=body, timeout=within)
        except httpx.TimeoutException as exc:
            raise RouterError(f"builtin router {self.where} timed out: no answer to "
                              f"{method} {path} within {within:g}s") from exc
        except httpx.HTTPError as exc:
            raise RouterError(f"builtin router {self.where} unreachable: "
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
            raise RouterHasNewer(f"builtin router {self.where} refused the flags (409): "
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
            response = await (await self._http()).get("/healthz", timeout=2.0)
        except (httpx.HTTPError, RouterError):
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
        """The running proxy's pid, or None (no pid file, or its process is gone or another)."""
        return self.process.pid()

    async def describe(self) -> RouterInfo:
        """Kind, pid, admin socket and log; the addresses it really listens on while it runs."""
        pid = self.pid()
        health = await self._answer() if pid is not None else None
        details = {"pid": str(pid)} if pid is not None else {}
        details |= {"admin": str(self.socket_path), "log": str(self.log_path)}
        return self._info(running=pid is not None, health=health, details=details)

    async def _answer(self) -> dict[str, Any] | None:
        """What the proxy says of itself (`/healthz`), or None when it does not answer in 2 s."""
        try:
            return self._json(self._ok(await self._send("GET", "/healthz", within=2.0), "GET", "/healthz"))
        except RouterError:
            return None

    def _info(self, *, running: bool, health: dict[str, Any] | None, details: dict[str, str]) -> RouterInfo:
        """The router as `describe` tells it: the addresses it really listens on when it
        answered, else the configured ones."""
        listen, preview = self.listen, self.preview_listen
        if health is not None:
            listen = str(health.get("listen") or listen)
            preview = str(health.get("preview_listen") or preview) if preview else None
        return RouterInfo(kind=self.kind, running=running, listen=listen, preview=preview,
                          details=details)

    async def _until_healthy(self, alive: Callable[[], bool]) -> bool:
        """Wait up to START_SECONDS for the proxy to answer; False at once when `alive()` says
        the process is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while loop.time() < deadline and alive():
            if await self.healthy():
                return True
            await asyncio.sleep(0.05)
        return False

    async def ensure_running(self) -> None:
        """Start the proxy unless it already answers; raise RouterError if it cannot start."""
        if self.pid() is not None and await self.healthy():
            return
        try:
            pid, started = self.process.spawn(self.listen, self.preview_listen)
        except OSError as exc:
            raise RouterError(f"cannot start the builtin router: {exc}") from exc
        if await self._until_healthy(lambda: procs.is_running(pid, None)):
            return
        if started is not None:  # running but never healthy (say, a worker that keeps dying)
            procs.signal_group(pid, started, signal.SIGKILL)
        raise RouterError(
            f"builtin router did not start (log {self.log_path}):\n{self.process.log_tail()}"
        )

    async def stop(self) -> None:
        """SIGTERM the proxy, wait for it to drain, SIGKILL its process group if it lingers.

        Only the very process the pid file names (same pid, start time and boot) is signalled.
        """
        try:
            await self.process.stop()
        except PermissionError as exc:
            raise RouterError(f"not allowed to stop the builtin router (pid {self.pid()})") from exc
