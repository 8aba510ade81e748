"""The proxy's parent process: owns the listening sockets, keeps one worker running.

It binds the public listener, the optional preview listener and the admin unix socket
(`DIR/admin.sock`, mode 0600), writes `DIR/proxy.pid` (JSON: its pid, start time and boot
id, so that a reused pid is never mistaken for it), and runs the worker with the socket
descriptors passed down. A worker that dies is replaced at once (with a growing pause only
if it keeps dying young); meanwhile new connections wait in the kernel's backlog. SIGTERM or
SIGINT is passed to the worker, which drains; a worker still alive after `STOP_SECONDS` is
killed. The parent blocks in `waitpid` and does no request work. It imports nothing heavy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from turnout import procs
from turnout.addresses import join_host_port, split_host_port
from turnout.files import write_atomic
from turnout.statedir import RouterFiles, make_private

STOP_SECONDS = 8
YOUNG_SECONDS = 5.0
MAX_BACKOFF = 5.0


class _State:
    stopping = False
    child: subprocess.Popen[bytes] | None = None


def _address(value: str) -> tuple[str, int]:
    """An argparse type: `host:port` (port 0: any free one)."""
    try:
        return split_host_port(value, any_port=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listener(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def _admin_socket(path: Path) -> socket.socket:
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left behind by a proxy that died
        else:
            raise OSError(f"another proxy already serves {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def _worker_command(fds: dict[str, int], state_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "turnout.routers.proxy.worker", "--state-dir", str(state_dir)]
    for name, fd in fds.items():
        cmd += [f"--{name}-fd", str(fd)]
    return cmd


def _install_signals(state: _State) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        state.stopping = True
        if state.child is not None and state.child.returncode is None:
            state.child.send_signal(signal.SIGTERM)
        signal.alarm(STOP_SECONDS)

    def overdue(signum: int, frame: FrameType | None) -> None:
        if state.child is not None and state.child.returncode is None:
            state.child.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, overdue)


def _run_workers(state: _State, cmd: list[str], fds: list[int]) -> None:
    backoff = 0.0
    while not state.stopping:
        started = time.monotonic()
        state.child = subprocess.Popen(cmd, pass_fds=fds)
        if state.stopping:
            state.child.send_signal(signal.SIGTERM)
        code = state.child.wait()
        if state.stopping:
            return
        young = time.monotonic() - started < YOUNG_SECONDS
        backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF) if young else 0.0
        print(f"proxy: worker exited ({code}); restarting in {backoff:.1f}s", file=sys.stderr)
        deadline = time.monotonic() + backoff
        while not state.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, backoff))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout proxy", description="turnout's builtin router")
    parser.add_argument("--listen", required=True, type=_address, help="host:port for user traffic")
    parser.add_argument("--preview-listen", type=_address, help="host:port serving only the preview revision")
    parser.add_argument("--state-dir", type=Path, required=True, help="table, socket, pid, log")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    files = RouterFiles(state_dir)
    make_private(state_dir)
    admin_path = files.admin_socket
    pid_path = files.pid_file
    try:
        socks = {"listen": _listener(args.listen)}
        if args.preview_listen:
            socks["preview"] = _listener(args.preview_listen)
        socks["admin"] = _admin_socket(admin_path)
    except OSError as exc:
        print(f"proxy: cannot bind: {exc}", file=sys.stderr)
        return 1
    state = _State()
    _install_signals(state)
    me = os.getpid()
    identity = {"pid": me, "started": procs.start_ticks(me), "boot_id": procs.boot_id()}
    write_atomic(pid_path, json.dumps(identity).encode())
    fds = {name: sock.fileno() for name, sock in socks.items()}
    listening = join_host_port(*args.listen)
    print(f"proxy: pid {os.getpid()} listening on {listening}", file=sys.stderr, flush=True)
    try:
        _run_workers(state, _worker_command(fds, state_dir), list(fds.values()))
    finally:
        for sock in socks.values():
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            admin_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()
    return 0
