"""HAProxy's processes for one router folder: check, start, reload, stop.

`HaproxyProcess` runs `haproxy -W -S master.sock -f haproxy.cfg` detached (own session,
output appended to `haproxy.log`, the builtin router's clean environment): the master stays
the process turnout started, and forks the worker that serves. The master's pid, start time
and boot id go to `haproxy.pid`, so a later turnout command finds it and never signals a
process that only got the same pid (the builtin router's rule, `turnout.procs`).

Every start and reload first runs `haproxy -c` on the file, so a configuration HAProxy
would refuse is a `RouterError` carrying HAProxy's words, and the running one stays.

A reload saves the servers' state to the server-state file (HAProxy loads it before serving,
so slots keep their addresses, states and health), then asks the master CLI to `reload`:
the master runs the new configuration in a new worker that takes over the very listening
sockets (no connection is refused meanwhile), and the old worker finishes its requests
and leaves. HAProxy 2.6's master CLI closes the connection without a word on `reload`, so
the reload counts as done once `show proc` reports it and the new worker's runtime API
answers. A start empties the state file: after a stop or a crash the configuration file,
which the router rewrites after every change, is the truth.

`stop` asks for a soft stop (SIGUSR1: no new connection, requests in progress finish),
then kills the process group if HAProxy is still there after `STOP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from turnout import procs
from turnout.errors import RouterError
from turnout.files import write_atomic
from turnout.routers.haproxy.config import ADMIN_SOCKET, STATE_FILE
from turnout.routers.haproxy.runtime import ProcInfo, Runtime, parse_stat
from turnout.routers.proxy.process import router_env

CONFIG_FILE = "haproxy.cfg"
MASTER_SOCKET = "master.sock"
PID_FILE = "haproxy.pid"
LOG_FILE = "haproxy.log"
EMPTY_STATE = b"1\n"  # a server-state file of format 1 without servers
START_SECONDS = 10.0
RELOAD_SECONDS = 10.0
CHECK_SECONDS = 30.0
STOP_SECONDS = 10.0
POLL_SECONDS = 0.01
INSTALL_HINT = "install it (Debian: apt-get install haproxy)"


class HaproxyProcess:
    """The HAProxy master (and its workers) of one router folder on this machine."""

    def __init__(self, folder: Path, *, binary: str = "haproxy") -> None:
        self.folder = folder
        self.binary = binary
        self.config_path = folder / CONFIG_FILE
        self.pid_path = folder / PID_FILE
        self.log_path = folder / LOG_FILE
        self.state_path = folder / STATE_FILE
        self.master_socket = folder / MASTER_SOCKET
        self.admin_socket = folder / ADMIN_SOCKET
        self.master = Runtime(self.master_socket)
        self.runtime = Runtime(self.admin_socket)

    # --- finding it
    def identity(self) -> tuple[int, float] | None:
        """(pid, start time) of the master the pid file names, if that very process runs."""
        try:
            data = json.loads(self.pid_path.read_text())
            pid, started, boot = int(data["pid"]), float(data["started"]), str(data["boot_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: nothing to trust
        if boot != procs.boot_id() or not procs.is_running(pid, started):
            return None
        return pid, started

    def pid(self) -> int | None:
        """The running master's pid, or None (no pid file, or its process is gone or another)."""
        found = self.identity()
        return None if found is None else found[0]

    def log_tail(self, lines: int = 15) -> str:
        try:
            return procs.tail_file(self.log_path, lines) or "(no log)"
        except OSError:
            return "(no log)"

    def _program(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise RouterError(f"HAProxy ({self.binary!r}) is not installed: {INSTALL_HINT}")
        return found

    # --- checking a configuration
    async def check(self, config_path: Path | None = None) -> None:
        """`haproxy -c` on the file (by default the folder's haproxy.cfg); RouterError with
        HAProxy's own words when it refuses it."""
        path = self.config_path if config_path is None else config_path
        argv = [self._program(), "-c", "-f", str(path)]
        try:
            child = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=router_env(), cwd=self.folder,
            )
        except OSError as exc:
            raise RouterError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            output, _ = await asyncio.wait_for(child.communicate(), CHECK_SECONDS)
        except TimeoutError as exc:
            child.kill()
            await child.wait()
            raise RouterError(f"HAProxy did not check {path} within {CHECK_SECONDS:g}s") from exc
        if child.returncode != 0:
            lines = output.decode(errors="replace").splitlines()
            said = "\n".join(line for line in lines if "[NOTICE]" not in line).strip()
            said = said or f"exit status {child.returncode}"
            raise RouterError(f"HAProxy refuses the configuration {path}:\n{said}")

    # --- starting
    async def start(self) -> int:
        """Check the configuration and start HAProxy; its master's pid once its runtime API
        answers. RouterError if it cannot start (with the end of its log)."""
        await self.check()
        if "," in str(self.master_socket):
            raise RouterError(f"HAProxy's master socket path cannot hold a comma: {self.master_socket}")
        write_atomic(self.state_path, EMPTY_STATE, durable=False)
        for stale in (self.master_socket, self.admin_socket):
            stale.unlink(missing_ok=True)  # an old socket must not pass for the new one
        argv = [self._program(), "-W", "-S", f"{self.master_socket},mode,600", "-f", str(self.config_path)]
        try:
            pid = procs.spawn(argv, cwd=self.folder, env=router_env(), log=self.log_path)
        except OSError as exc:
            raise RouterError(f"cannot start HAProxy: {exc}") from exc
        started = procs.start_ticks(pid)
        record = {"pid": pid, "started": started, "boot_id": procs.boot_id()}
        write_atomic(self.pid_path, json.dumps(record).encode())
        if await self._until(self._serving, START_SECONDS, pid, started):
            return pid
        if started is not None:  # running but not serving: do not leave it half there
            procs.signal_group(pid, started, signal.SIGKILL)
        raise RouterError(f"HAProxy did not start (log {self.log_path}):\n{self.log_tail()}")

    async def _serving(self) -> bool:
        """True once both the master CLI and the worker's runtime API answer."""
        try:
            await self.master.processes()
            await self.runtime.command("show info")
        except RouterError:
            return False
        return True

    @staticmethod
    async def _until(ready: Callable[[], Awaitable[bool]], seconds: float, pid: int,
                     started: float | None) -> bool:
        """Poll `ready` until it says True (then True), the master is gone or `seconds` pass
        (then False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline and procs.is_running(pid, started):
            if await ready():
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    # --- reloading
    async def reload(self) -> None:
        """Check the folder's configuration, save the servers' state and reload HAProxy
        without refusing a connection; return once the new worker serves. RouterError if
        HAProxy is not running or refused the reload (the old configuration then still runs)."""
        found = self.identity()
        if found is None:
            raise RouterError(f"HAProxy is not running (no live master in {self.pid_path})")
        pid, started = found
        await self.check()
        before = await self._master_line()
        state = await self.runtime.command("show servers state")
        write_atomic(self.state_path, state.encode(), durable=False)
        await self.master.command("reload")  # the master closes the connection as it re-runs
        done: list[ProcInfo] = []

        async def reloaded() -> bool:
            try:
                line = await self._master_line()
            except RouterError:
                return False  # the master CLI is down while the master starts again
            if line.reloads <= before.reloads:
                return False
            done.append(line)
            return await self._serving()

        if not await self._until(reloaded, RELOAD_SECONDS, pid, started):
            raise RouterError(f"HAProxy did not reload within {RELOAD_SECONDS:g}s "
                              f"(log {self.log_path}):\n{self.log_tail()}")
        if (done[-1].failed_reloads or 0) > (before.failed_reloads or 0):
            raise RouterError(f"HAProxy refused the reload and runs its previous configuration "
                              f"(log {self.log_path}):\n{self.log_tail()}")

    async def _master_line(self) -> ProcInfo:
        master = [p for p in await self.master.processes() if p.kind == "master"]
        if not master:
            raise RouterError(f"HAProxy's master CLI at {self.master_socket} lists no master")
        return master[0]

    async def workers(self) -> list[ProcInfo]:
        """The workers the master CLI lists, old ones (finishing after a reload) included."""
        return [p for p in await self.master.processes() if p.kind == "worker"]

    # --- stopping
    async def stop(self) -> None:
        """Soft-stop HAProxy: its listeners close and the requests in progress finish; once
        none is left (HAProxy keeps idle keep-alive connections open until their next request,
        so they would hold it up) end it with SIGTERM, and kill its process group if it is
        still there after STOP_SECONDS. Only the very master the pid file names is signalled;
        a stopped HAProxy is no error. PermissionError when it is not ours to signal."""
        found = self.identity()
        if found is None:
            return
        pid, started = found
        if not procs.signal_process(pid, started, signal.SIGUSR1):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        ended = False
        while loop.time() < deadline and procs.is_running(pid, started):
            if not ended and await self._in_flight() == 0:
                ended = procs.signal_process(pid, started, signal.SIGTERM)
            await asyncio.sleep(0.02)
        if procs.is_running(pid, started):
            procs.signal_group(pid, started, signal.SIGKILL)
            await self._gone(pid, started, 5.0)

    async def _in_flight(self) -> int | None:
        """Requests the workers are still serving or queueing (their backends' scur and
        qcur, asked through the master CLI); None when the master does not tell."""
        try:
            total = 0
            for worker in await self.workers():
                for row in parse_stat(await self.master.command(f"@!{worker.pid} show stat")):
                    if row.name == "BACKEND":
                        total += row.number("scur") + row.number("qcur")
        except (RouterError, ValueError):
            return None
        return total

    @staticmethod
    async def _gone(pid: int, started: float, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if not procs.is_running(pid, started):
                return True
            await asyncio.sleep(0.02)
        return not procs.is_running(pid, started)
