"""The builtin router's process, seen from the machine it runs on: start, find, stop.

`ProxyProcess` knows one state folder's proxy by the pid file the proxy writes there (its
pid, start time and boot id: a reused pid is never taken for it nor signalled). `spawn`
starts the proxy detached (own session, output appended to `proxy.log`) with a clean
environment (`router_env`: no tokens or credentials of the deployer); `stop` sends SIGTERM,
waits for the drain and kills the process group if it lingers.

It imports nothing but turnout's own process helpers, so the same code runs on this
machine (`turnout.routers.builtin`) and on a router host (`turnout.routers.proxy.control`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from turnout import procs
from turnout.spec.run import INHERIT_ENV
from turnout.statedir import RouterFiles

STOP_SECONDS = 10.0

# What the proxy takes from the environment of the turnout command that starts it: what an
# instance gets by default, what Python needs to find turnout, and the proxy's own settings.
ROUTER_ENV = (*INHERIT_ENV, "TMPDIR", "PYTHONPATH", "PYTHONHOME")
ROUTER_ENV_PREFIX = "TURNOUT_PROXY_"


def router_env(source: dict[str, str] | None = None) -> dict[str, str]:
    """The proxy's whole environment, taken from `source` (default: this process's)."""
    own = dict(os.environ) if source is None else source
    names = [*ROUTER_ENV, *sorted(n for n in own if n.startswith(ROUTER_ENV_PREFIX))]
    return procs.child_env(names, {}, source=own)


def proxy_argv(state_dir: Path, listen: str, preview_listen: str | None) -> list[str]:
    """The command that runs the proxy for `state_dir` with this Python."""
    argv = [sys.executable, "-m", "turnout.routers.proxy", "--listen", listen]
    if preview_listen:
        argv += ["--preview-listen", preview_listen]
    return [*argv, "--state-dir", str(state_dir.resolve())]


class ProxyProcess:
    """The proxy of one state folder on this machine."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        files = RouterFiles(state_dir)
        self.pid_path = files.pid_file
        self.log_path = files.log

    def identity(self) -> tuple[int, float] | None:
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
        folder's proxy by its command line; its start time is then read once, here."""
        argv = procs.cmdline(pid)
        if argv is None or "turnout.routers.proxy" not in argv:
            return None
        if not {str(self.state_dir), str(self.state_dir.resolve())} & set(argv):
            return None
        started = procs.start_ticks(pid)
        return None if started is None else (pid, float(started))

    def pid(self) -> int | None:
        """The running proxy's pid, or None (no pid file, or its process is gone or another)."""
        found = self.identity()
        return None if found is None else found[0]

    def spawn(self, listen: str, preview_listen: str | None) -> tuple[int, int | None]:
        """Start the proxy detached; its (pid, start ticks). OSError if it cannot run."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = proxy_argv(self.state_dir, listen, preview_listen)
        pid = procs.spawn(argv, cwd=self.log_path.parent, env=router_env(), log=self.log_path)
        return pid, procs.start_ticks(pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return procs.tail_file(self.log_path, lines) or "(no log)"
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """SIGTERM the proxy, wait for it to drain, SIGKILL its process group if it lingers.
        PermissionError when it is not ours to signal."""
        found = self.identity()
        if found is None:
            return
        pid, started = found
        if not procs.signal_process(pid, started, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        while loop.time() < deadline:
            if not procs.is_running(pid, started):
                return
            await asyncio.sleep(0.05)
        procs.signal_group(pid, started, signal.SIGKILL)
        for _ in range(100):  # SIGKILL takes effect at once; wait up to 5 s for it to be gone
            if not procs.is_running(pid, started):
                return
            await asyncio.sleep(0.05)
