"""Process helpers for the local platform: identity, signals, spawning and reaping.

A pid alone does not name a process: the kernel reuses pids. A process is named here by
its pid *and* its start time (field 22 of `/proc/PID/stat`, in clock ticks since boot),
read again before every signal, so turnout never signals a stranger that got the pid.

Children are started in their own session (they outlive the CLI that started them).
While the starting Python process lives, its `Popen` objects stay in one registry and
are polled on every call, so exited children are reaped instead of lingering as zombies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys/kernel/random/boot_id"

# Popen objects of the children this Python process started, by pid.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class ProcState:
    """What `/proc/PID/stat` says: the one-letter state and the start time in ticks."""

    state: str
    start_ticks: int


def boot_id() -> str:
    """This boot's id: start times in ticks only mean something within one boot."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def proc_state(pid: int) -> ProcState | None:
    """The state and start time of `pid`, or None when no such process exists."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); field 22 (starttime) is therefore fields[19].
    return ProcState(state=fields[0], start_ticks=int(fields[19]))


def cmdline(pid: int) -> list[str] | None:
    """The argv `pid` runs with, or None when no such process exists (or it is a zombie)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] if raw else None


def start_ticks(pid: int) -> int | None:
    state = proc_state(pid)
    return None if state is None else state.start_ticks


def is_running(pid: int, started: float | None) -> bool:
    """True when `pid` runs, is not a zombie, and started at `started` (when given)."""
    reap()
    state = proc_state(pid)
    if state is None or state.state in ("Z", "X", "x"):
        return False
    return started is None or state.start_ticks == int(started)


def signal_process(pid: int, started: float | None, signum: signal.Signals, *, group: bool = False) -> bool:
    """Send `signum` to that very process (or, with `group`, the process group it leads);
    False if it is gone.

    Raises PermissionError when the process belongs to another user.
    """
    if not is_running(pid, started):
        return False
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def signal_group(pid: int, started: float | None, signum: signal.Signals) -> bool:
    """`signal_process` to the process group that very process leads."""
    return signal_process(pid, started, signum, group=True)


def child_env(
    inherit: Iterable[str], env: Mapping[str, str], *, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of a process turnout starts for the service.

    Only the names in `inherit` are taken from `source` (turnout's own environment by default),
    where they are set; `env` is laid over them. Nothing else of the deployer's environment
    (tokens, cloud credentials) reaches the child.
    """
    own = os.environ if source is None else source
    result = {name: own[name] for name in inherit if name in own}
    result.update(env)
    return result


def reap() -> None:
    """Poll every child this process started; forget those that have exited."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def spawn(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> int:
    """Start `argv` without a shell in a new session, output appended to `log`; return its pid.

    This is how turnout starts every process that outlives the command starting it: the
    instances, the builtin router and the reaper. `env` is the child's whole environment.
    The log is made readable by its owner only (0600, its folder 0700): output may hold
    what the program was given. Raises OSError (FileNotFoundError, PermissionError, ...)
    when the program cannot run.
    """
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    _CHILDREN[child.pid] = child
    return child.pid


def free_port(host: str) -> int:
    """A TCP port that was free on `host` a moment ago (bind to 0 and release)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
