"""The `local` platform: instances are processes on this machine.

Each instance is started without a shell in its own session, so it outlives the CLI that
started it, with its output in the state folder's `logs/<service>-<instance id>.log`. Its
environment is clean: the spec's `run.env`, the variables turnout sets (PORT, TURNOUT_*)
and only the names `run.inherit_env` lists from turnout's own environment. A JSON
record per instance in the state folder's `instances/` (written atomically) holds its pid, start
time and boot id: that is how a restarted control plane finds its fleet again, and how it
tells the very process it started from another that happens to have the same pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import procs
from turnout.errors import PlatformError
from turnout.files import write_atomic
from turnout.model import Instance, Revision
from turnout.platforms.base import instance_env, placeholders
from turnout.spec import Spec
from turnout.statedir import StateDir

_POLL = 0.05  # seconds between checks while waiting for a process to exit
_KILL_WAIT = 5.0  # how long to wait for a SIGKILLed process to disappear


@dataclass(frozen=True, slots=True)
class _Launch:
    """A revision's run settings with the placeholders of one instance filled in."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


class LocalPlatform:
    """Start, stop and rediscover instances as local processes (see the module docstring)."""

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> LocalPlatform:
        """The spec's platform over its state folder (for `turnout.wiring`)."""
        return cls(state=state)

    def __init__(self, *, state: StateDir, host: str = "127.0.0.1") -> None:
        self.state = state
        self.spec_dir = state.spec_dir  # where `run.cwd` is relative to
        self.host = host

    # -- paths ---------------------------------------------------------------------------
    def _record_path(self, instance_id: str) -> Path:
        return self.state.instances / f"{instance_id}.json"

    def logs_path(self, instance: Instance) -> Path:
        """Where the instance's stdout and stderr go."""
        return self.state.logs / f"{instance.service}-{instance.id}.log"

    def tail(self, instance: Instance, lines: int = 20) -> str:
        """The last lines of the instance's log, to show why it failed."""
        return procs.tail_file(self.logs_path(instance), lines)

    # -- Platform ------------------------------------------------------------------------
    async def start(self, revision: Revision, *, slot: int) -> Instance:
        """Start one instance of `revision` in `slot`; do not wait for it to be healthy.

        If the record of a live instance with the same id exists (a step run twice after a
        crash), that instance is returned instead of starting a second copy.
        """
        existing = self._read_record(self._record_path(f"{revision.id}-{slot}"))
        if existing is not None and await self.alive(existing):
            return existing
        port = procs.free_port(self.host)
        launch = self._launch(revision, slot=slot, port=port)
        instance = Instance(
            service=revision.service,
            revision=revision.id,
            version=revision.version,
            slot=slot,
            host=self.host,
            port=port,
        )
        pid = self._spawn(launch, self.logs_path(instance))
        ticks = procs.start_ticks(pid)  # None only if it already exited and was reaped
        started = None if ticks is None else float(ticks)
        instance = dataclasses.replace(instance, pid=pid, started=started)
        record = {
            "instance": instance.to_json(),
            "boot_id": procs.boot_id(),
            "argv": launch.argv,
            "cwd": str(launch.cwd),
        }
        try:
            write_atomic(self._record_path(instance.id), json.dumps(record, indent=2).encode())
        except OSError as exc:
            procs.signal_group(pid, started, signal.SIGKILL)
            raise PlatformError(f"cannot write the record of {instance.id}: {exc}") from exc
        return instance

    async def alive(self, instance: Instance) -> bool:
        """True while the very process that was started (same pid, same start time) runs."""
        if instance.pid is None or instance.started is None:
            return False
        return procs.is_running(instance.pid, instance.started)

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """SIGTERM the instance's process group, SIGKILL it after `grace` seconds."""
        try:
            if instance.pid is not None and instance.started is not None:
                await self._terminate(instance.pid, instance.started, grace)
        except PermissionError as exc:
            raise PlatformError(f"not allowed to stop {instance.id} (pid {instance.pid})") from exc
        self._remove_record(instance)

    async def instances(self, service: str) -> list[Instance]:
        """Every live instance of `service` with a record; records of dead ones are deleted."""
        found: list[Instance] = []
        for path in sorted(self.state.instances.glob("*.json")):
            instance = self._read_record(path)
            if instance is None:
                continue
            if instance.service != service:
                continue
            if await self.alive(instance):
                found.append(instance)
            else:
                path.unlink(missing_ok=True)
        return found

    async def log_tail(self, instance: Instance, *, lines: int = 20) -> str:
        return self.tail(instance, lines)

    async def aclose(self) -> None:
        """Reap children that have exited; running instances are left running on purpose."""
        procs.reap()

    # -- helpers -------------------------------------------------------------------------
    def _launch(self, revision: Revision, *, slot: int, port: int) -> _Launch:
        fill = placeholders(revision, slot=slot, port=port)
        cwd = (self.spec_dir / fill(revision.run.cwd)).resolve()
        env = procs.child_env(revision.run.inherit_env, instance_env(revision, slot=slot, port=port))
        return _Launch(argv=[fill(arg) for arg in revision.run.command], cwd=cwd, env=env)

    def _spawn(self, launch: _Launch, log: Path) -> int:
        program = launch.argv[0]
        if not launch.cwd.is_dir():
            raise PlatformError(
                f"cannot start {program!r}: working directory {launch.cwd} does not exist"
            )
        try:
            return procs.spawn(launch.argv, cwd=launch.cwd, env=launch.env, log=log)
        except FileNotFoundError as exc:
            raise PlatformError(
                f"cannot start {program!r}: no such program (searched PATH and {launch.cwd})"
            ) from exc
        except PermissionError as exc:
            raise PlatformError(f"cannot start {program!r}: permission denied") from exc
        except OSError as exc:
            raise PlatformError(f"cannot start {program!r}: {exc.strerror or exc}") from exc

    async def _terminate(self, pid: int, started: float, grace: float) -> None:
        if not procs.signal_group(pid, started, signal.SIGTERM):
            return
        if await self._wait_gone(pid, started, grace):
            return
        if procs.signal_group(pid, started, signal.SIGKILL):
            await self._wait_gone(pid, started, _KILL_WAIT)

    async def _wait_gone(self, pid: int, started: float, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while procs.is_running(pid, started):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(_POLL, max(0.0, deadline - loop.time())))
        return True

    def _read_record(self, path: Path) -> Instance | None:
        """The instance in a record file; None (and the file removed) if it is unusable."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            instance = Instance.from_json(data["instance"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            return None
        if data.get("boot_id") and data["boot_id"] != procs.boot_id():
            # Recorded before a reboot: that process is gone whatever its pid is now.
            path.unlink(missing_ok=True)
            return None
        return instance

    def _remove_record(self, instance: Instance) -> None:
        """Delete the instance's record, unless it now describes a newer process."""
        path = self._record_path(instance.id)
        recorded = self._read_record(path)
        if recorded is None:
            return
        newer = (recorded.pid, recorded.started) != (instance.pid, instance.started)
        if (
            newer
            and recorded.pid is not None
            and recorded.started is not None
            and procs.is_running(recorded.pid, recorded.started)
        ):
            return
        path.unlink(missing_ok=True)
