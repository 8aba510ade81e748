"""`turnout server`: the Unleash-compatible client API, the admin API and the event stream.

Routes (every `/api/` route needs `Authorization: <token>` or `Bearer <token>`; missing,
unknown or revoked → 401, a client token on an admin route → 403; an address with too
many 401s lately → 429 with Retry-After, token unchecked, see `turnout.api.guard`):

    GET  /api/client/features   the state document; ETag "<revision>", If-None-Match → 304
    POST /api/client/register   an SDK says hello (202)
    POST /api/client/metrics    an SDK's flag counts (202), summed on GET /api/admin/metrics
    GET  /api/client/stream     server-sent events: `state` now and on every change
    /api/admin/...              flags, segments, metrics (see `turnout.api.admin`)
    GET  /health                liveness, no token

`App.handle` answers the client routes synchronously from memory (the snapshot, the
token cache), which is what lets one core serve over ten thousand feature requests a
second; only a token not seen for a few seconds and the admin routes touch the store.
Limits on what one client may hold (head size and time, idle time, pipelining, body,
connections) are in `turnout.api.limits` and applied by `turnout.api.connection`.
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
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

from turnout.addresses import split_host_port
from turnout.api.admin import PREFIX as ADMIN_PREFIX
from turnout.api.admin import Admin
from turnout.api.bodies import BodyError, MetricsBook, MetricsReport, Registration, parse
from turnout.api.connection import Connection, Refused
from turnout.api.guard import FailedAuth
from turnout.api.http import Outcome, Request, Response, Stream, json_response, problems
from turnout.api.limits import DEFAULT, Limits, add_arguments, from_args
from turnout.api.live import POLL_S, Gateway, Live
from turnout.api.tokens import Caller, TokenCache, secret_of
from turnout.errors import TurnoutError, UserError
from turnout.flags.store import FlagStore
from turnout.statedir import DATABASE_URL_ENV, StateDir, configured_database_url

log = logging.getLogger("turnout.server")

DEFAULT_LISTEN = "127.0.0.1:4242"
DRAIN_S = 2.0
_UNAUTHORIZED = problems(401, ["authorization: missing, unknown or revoked API token"])
_FORBIDDEN = problems(403, ["authorization: this route needs an admin token"])
_ACCEPTED = Response(202)
_SSE = b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"


def _not_found(request: Request) -> Response:
    return problems(404, [f"path: no route {request.method} {request.path}"])


class App:
    """Routes requests (see the module docstring)."""

    def __init__(self, store: FlagStore, gateway: Gateway, limits: Limits = DEFAULT) -> None:
        self.gateway = gateway
        self.metrics = MetricsBook()
        self.tokens = TokenCache(self._check_token)
        self.failures = FailedAuth(limit=limits.auth_failures, window=limits.auth_window,
                                   block=limits.auth_block)
        self.live = Live(store, gateway, on_change=self.tokens.clear)
        self.admin = Admin(store, gateway, self.metrics, self.live.load)
        self._store = store

    async def _check_token(self, secret: str) -> Caller | None:
        token = await self.gateway.run(self._store.check_token, secret)
        return None if token is None else Caller(token.name, token.kind)

    def handle(self, request: Request) -> Outcome:
        if not request.path.startswith("/api/"):
            if request.path in ("/health", "/healthz") and request.method in ("GET", "HEAD"):
                return json_response(200, {"health": "GOOD"})
            return _not_found(request)
        if self.failures.blocked and (wait := self.failures.retry_after(request.client)):
            return json_response(429, {"problems": [
                f"authorization: too many failed attempts from {request.client}; "
                f"retry in {wait} s"]}, b"Retry-After: %d\r\n" % wait)
        secret = secret_of(request.authorization)
        if secret is None:
            self.failures.failed(request.client)
            return _UNAUTHORIZED
        known, caller = self.tokens.cached(secret)
        if not known:
            return self._after_lookup(request, secret)
        if caller is None:
            self.failures.failed(request.client)
        return self._route(request, caller)

    async def _after_lookup(self, request: Request, secret: str) -> Response | Stream:
        caller = await self.tokens.lookup(secret)
        if caller is None:
            self.failures.failed(request.client)
        outcome = self._route(request, caller)
        return outcome if isinstance(outcome, Response | Stream) else await outcome

    def _route(self, request: Request, caller: Caller | None) -> Outcome:
        if caller is None:
            return _UNAUTHORIZED
        path, method = request.path, request.method
        if path == "/api/client/features" and method == "GET":
            snapshot = self.live.snapshot
            if snapshot is None:
                return problems(503, ["server: the flag state is not loaded yet"])
            return Response(200, raw=snapshot.answer(request.if_none_match, request.accept_gzip))
        if path.startswith(ADMIN_PREFIX):
            if caller.kind != "admin":
                return _FORBIDDEN
            work = self.admin.dispatch(request, caller)
            return _not_found(request) if work is None else work
        if path == "/api/client/stream" and method == "GET":
            return Stream(_SSE, self.live.subscribe)
        if path == "/api/client/register" and method == "POST":
            return self._accept(request, register=True)
        if path == "/api/client/metrics" and method == "POST":
            return self._accept(request, register=False)
        return _not_found(request)

    def _accept(self, request: Request, *, register: bool) -> Response:
        try:
            if register:
                self.metrics.register(parse(Registration, request.body), at=time.time())
            else:
                self.metrics.record(parse(MetricsReport, request.body), at=time.time())
        except BodyError as exc:
            return problems(400, exc.problems)
        return _ACCEPTED


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
