"""The proxy worker process: serves the sockets its supervisor hands it, on uvloop.

It loads the persisted table, flag settings and counters, serves the public listener, the
optional preview listener and the admin socket until SIGTERM/SIGINT, then stops accepting,
lets in-flight requests finish (bounded by `DRAIN_SECONDS`), closes tunnels, saves its
counters and exits. If the supervisor dies, the kernel sends it SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import resource
import signal
import socket
from pathlib import Path

import uvloop

from turnout.addresses import join_host_port
from turnout.routers.proxy.admin import AdminConn, load_table
from turnout.routers.proxy.flags import load_settings
from turnout.routers.proxy.server import ClientConn
from turnout.routers.proxy.state import Proxy

DRAIN_SECONDS = 5.0
GC_THRESHOLD = 20_000
PR_SET_PDEATHSIG = 1

log = logging.getLogger("turnout.proxy")


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the worker then outlives a killed parent
        pass


def _more_files() -> None:
    """Raise the soft limit on open files to the hard one: each client may need two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return join_host_port(host, port)


async def serve(listen_fd: int, preview_fd: int | None, admin_fd: int, state_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, load_table(state_dir), load_settings(state_dir))
    proxy.metrics.load(state_dir)
    public = socket.socket(fileno=listen_fd)
    proxy.addresses["listen"] = _address(public)
    servers = [await loop.create_server(lambda: ClientConn(proxy), sock=public, backlog=1024)]
    if preview_fd is not None:
        preview = socket.socket(fileno=preview_fd)
        proxy.addresses["preview_listen"] = _address(preview)
        servers.append(
            await loop.create_server(
                lambda: ClientConn(proxy, preview=True), sock=preview, backlog=1024
            )
        )
    admin = socket.socket(fileno=admin_fd)
    servers.append(await loop.create_unix_server(lambda: AdminConn(proxy, state_dir), sock=admin))
    stop = asyncio.Event()
    # Startup objects (modules, pydantic models) never die: keep the collector off them, and
    # collect young objects less often; per-request objects are freed by reference counting.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("worker %s serving %s (generation %d)", proxy.metrics.worker, proxy.addresses,
             proxy.plan.table.generation)
    await stop.wait()
    log.info("worker %s draining", proxy.metrics.worker)
    for server in servers:
        server.close()
    proxy.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proxy.all_closed.wait(), DRAIN_SECONDS)
    for client in list(proxy.clients):
        client.abort()
    for tunnel in list(proxy.tunnels):
        tunnel.close()
    proxy.conns.close_all()
    proxy.metrics.save(state_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout-proxy-worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--preview-fd", type=int)
    parser.add_argument("--admin-fd", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    _die_with_parent()
    _more_files()
    uvloop.run(serve(args.listen_fd, args.preview_fd, args.admin_fd, args.state_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
