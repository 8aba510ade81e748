"""`turnout server`: the Unleash-compatible client API, the admin API and the event stream.

This module runs the server: the command line (`main`), the listening socket, the
connections it accepts (`turnout.api.connection`, or `turnout.api.refused` beyond
`max_connections`), the sweep that applies their timeouts, the feed of new flag revisions
to the service's router, and a graceful stop. What each request gets is `turnout.api.app`'s
(the routes are listed there). Limits on what one client may hold (head size and time,
idle time, pipelining, body, connections) are in `turnout.api.limits` and applied by
`turnout.api.connection`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path

from turnout.addresses import split_host_port
from turnout.api.app import App
from turnout.api.connection import Connection
from turnout.api.limits import DEFAULT, Limits, add_arguments, from_args
from turnout.api.live import POLL_S, Gateway, Live
from turnout.api.refused import Refused
from turnout.errors import TurnoutError, UserError
from turnout.flags.store import FlagStore
from turnout.statedir import DATABASE_URL_ENV, StateDir, configured_database_url

log = logging.getLogger("turnout.server")

DEFAULT_LISTEN = "127.0.0.1:4242"
DRAIN_S = 2.0


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (port 0 picks a free one); UserError otherwise."""
    try:
        return split_host_port(value, any_port=True)
    except ValueError as exc:
        raise UserError(f"--listen: {exc}") from None


async def feed_router(live: Live, gateway: Gateway, spec: Path) -> None:
    """Push every new revision of the flags to the router of the spec file `spec`, if it runs
    and evaluates flags (through the `Router` seam: see `turnout.flags.push`).

    Changes reach the server from anywhere (its admin API, the CLI, a deployment); this
    makes the router follow them too, within one poll of the flag store.
    """
    from turnout.flags.push import push_to_router

    pushed: int | None = None
    while True:
        snapshot = live.snapshot
        if snapshot is not None and snapshot.revision != pushed:
            try:
                await gateway.run(push_to_router, spec, json.loads(snapshot.body))
                pushed = snapshot.revision
            except TurnoutError as exc:
                log.warning("cannot give the router the new flags: %s", exc)
        await asyncio.sleep(POLL_S)


async def sweep(connections: set[Connection], every: float) -> None:
    """Check every connection against the timeouts, `every` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        now = loop.time()
        for conn in list(connections):
            conn.check(now)


async def serve(store: FlagStore, host: str, port: int, *,
                stop: asyncio.Event | None = None, spec: Path | None = None,
                limits: Limits = DEFAULT) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then close streams and drain.

    With `spec` (a spec file), the service's router gets every change of the flags too."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway()
    app = App(store, gateway, limits)
    connections: set[Connection] = set()
    refusing: set[Refused] = set()

    def accept() -> asyncio.Protocol:
        if len(connections) >= limits.max_connections:
            return Refused(refusing)
        return Connection(app.handle, connections, limits)

    try:
        await app.live.load()
        server = await loop.create_server(accept, host, port, backlog=2048)
        bound = server.sockets[0].getsockname()
        print(f"turnout server pid={os.getpid()} listening on http://{host}:{bound[1]}", flush=True)
        followers = [asyncio.create_task(app.live.follow()),
                     asyncio.create_task(sweep(connections, limits.sweep_s)),
                     asyncio.create_task(app.tokens.follow(
                         lambda: gateway.run(store.token_revocations)))]
        if spec is not None:
            followers.append(asyncio.create_task(feed_router(app.live, gateway, spec)))
        await stop.wait()
        server.close()
        app.live.close_streams()
        await _drain(connections)
        for follower in followers:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    finally:
        gateway.shutdown()
    print(f"turnout server pid={os.getpid()} stopped", flush=True)


async def _drain(connections: set[Connection]) -> None:
    deadline = asyncio.get_running_loop().time() + DRAIN_S
    while connections and asyncio.get_running_loop().time() < deadline:
        for conn in list(connections):
            conn.close()
        await asyncio.sleep(0.02)


def spec_path(spec_file: str | None) -> Path | None:
    """The spec file (`-f`, else ./turnout.yaml), or None when there is none (flags only)."""
    from turnout.specfile import find_spec

    try:
        return find_spec(Path.cwd(), spec_file).resolve()
    except UserError:
        if spec_file is not None:
            raise
        return None


def state_folder(spec_file: str | None) -> StateDir | None:
    """The state folder beside the spec file, or None when there is none (flags only, no router)."""
    spec = spec_path(spec_file)
    return None if spec is None else StateDir.for_spec(spec)


def database_url(state: StateDir | None) -> str:
    """TURNOUT_DATABASE_URL, else the state database beside the spec file."""
    if state is not None:
        return state.database()
    given = configured_database_url()
    if given is None:
        raise UserError(f"no turnout.yaml here: give -f FILE, or set {DATABASE_URL_ENV}")
    return given


def _allow_open_files(connections: int) -> None:
    """Raise the soft limit on open files to fit `connections` (and the store), if allowed."""
    import resource

    need = connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    new = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < need:
        print(f"warning: --max-connections {connections} needs about {need} open files but "
              f"the limit is {new}; connections beyond about {new - 64} may wait in the backlog",
              file=sys.stderr, flush=True)


def _run(work: Awaitable[None]) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    with runner:
        runner.run(work)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `turnout server`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="turnout server", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    parser.add_argument("-f", "--file", default=None, help="spec file (default: ./turnout.yaml)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    limits = from_args(args)
    try:
        host, port = parse_listen(args.listen)
        spec = spec_path(args.file)
        state = None if spec is None else StateDir.for_spec(spec)
        store = FlagStore.open(database_url(state))
    except TurnoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _allow_open_files(limits.max_connections)
    try:
        _run(serve(store, host, port, spec=spec, limits=limits))
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
