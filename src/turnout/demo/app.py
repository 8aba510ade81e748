"""The bundled sample web app: a tiny HTTP/1.1 service that demos and tests deploy.

`python -m turnout.demo.app --port PORT` serves `GET /healthz` and a JSON echo on every
other path, stamped with its version (`TURNOUT_VERSION` or `--version`) in the body and
in an `X-Version` header. Environment variables, read once at start, make it misbehave
on purpose so that deployments have something to roll back from:

    DEMO_FAIL=start      exit 1 at once          DEMO_ERROR_RATE=0.2  that share of 500s
    DEMO_FAIL=health     500 on /healthz         DEMO_LATENCY_MS=N    N ms more per request
    DEMO_FAIL=errors     500 on everything else  DEMO_STARTUP_MS=N    sleep before listening
    DEMO_FAIL=refuse     pass the first health check, then close the listening socket:
                         every later connection is refused (the process keeps running)

The request path is an asyncio protocol over httptools (no framework), so one core serves
thousands of requests a second. SIGTERM/SIGINT stop it gracefully: the listener closes,
idle keep-alive connections are closed, busy ones finish their response with
`Connection: close`, and the process exits 0 once they are done (or after the drain
timeout, whichever comes first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs

import httptools

FAIL_MODES = ("", "start", "health", "errors", "refuse")
MAX_SLOW_MS = 60_000
FRESH_GRACE_S = 0.1  # how long a never-used connection may still send its first request
_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What this process answers, fixed at start from the environment."""

    version: str
    fail: str = ""
    error_rate: float = 0.0
    latency_s: float = 0.0
    startup_s: float = 0.0
    feature: str = ""  # a flag whose `on` (X-Turnout-Flags from the router) takes the new code path
    feature_fail: bool = False  # the new code path answers 500

    @classmethod
    def from_env(cls, env: Mapping[str, str], version: str | None = None) -> Behaviour:
        """Read the DEMO_* variables; raises ValueError naming the bad variable."""
        fail = env.get("DEMO_FAIL", "").strip().lower()
        if fail not in FAIL_MODES:
            raise ValueError(f"DEMO_FAIL must be one of {', '.join(FAIL_MODES[1:])}; got {fail!r}")
        rate = _number(env, "DEMO_ERROR_RATE")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"DEMO_ERROR_RATE must be between 0 and 1; got {rate}")
        return cls(
            version=version or env.get("TURNOUT_VERSION") or "dev",
            fail=fail,
            error_rate=rate,
            latency_s=_number(env, "DEMO_LATENCY_MS") / 1000.0,
            startup_s=_number(env, "DEMO_STARTUP_MS") / 1000.0,
            feature=env.get("DEMO_FEATURE", "").strip(),
            feature_fail=env.get("DEMO_FEATURE_FAIL", "").strip() in ("1", "true", "yes"),
        )


def _number(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        raise ValueError(f"{name} must be a number; got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative; got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: bytes
    user: str | None
    body_len: int
    keep_alive: bool
    flags: str = ""  # X-Turnout-Flags as the router sent it


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    delay_s: float = 0.0
    content_type: bytes = b"application/json"
    version: bytes = b""  # X-Version when it differs from the process's (the new code path)


class DemoApp:
    """Decides answers and tracks open connections for a graceful stop."""

    def __init__(self, behaviour: Behaviour, *, rng: random.Random | None = None) -> None:
        self.behaviour = behaviour
        self.connections: set[_Connection] = set()
        self.closing = False
        self.served = 0
        self.drained = asyncio.Event()  # set once closing and no connection is left
        self.refusing = asyncio.Event()  # DEMO_FAIL=refuse: set by the first passed health check
        self._rng = rng or random.Random()
        self._version_header = b"X-Version: " + behaviour.version.encode("latin-1") + b"\r\n"

    def answer(self, request: Request) -> Answer:
        b = self.behaviour
        path, _, query = request.target.partition(b"?")
        if path == b"/healthz":
            if b.fail == "health":
                return Answer(500, b"unhealthy", content_type=b"text/plain")
            if b.fail == "refuse":
                self.refusing.set()  # this answer is the last one: serve() closes the listener
            return Answer(200, b"ok", content_type=b"text/plain")
        delay = b.latency_s
        if path == b"/slow":
            try:
                ms = float(parse_qs(query.decode("latin-1")).get("ms", ["0"])[0])
            except ValueError:
                return Answer(400, b'{"error": "ms must be a number"}')
            delay += min(max(ms, 0.0), MAX_SLOW_MS) / 1000.0
        version = b.version
        if b.feature and f"{b.feature}=on" in request.flags.replace(" ", "").split(","):
            version = f"{b.version}+{b.feature}"  # the new code path says so in X-Version
            if b.feature_fail:
                return Answer(500, b'{"error": "new code path failed"}', delay, version=version.encode())
        if b.fail == "errors" or (b.error_rate and self._rng.random() < b.error_rate):
            return Answer(500, b'{"error": "injected failure"}', delay)
        doc: dict[str, object] = {
            "version": version,
            "path": path.decode("latin-1"),
            "user": request.user,
        }
        if request.method not in ("GET", "HEAD"):
            doc["received"] = request.body_len
        override = version.encode() if version != b.version else b""
        return Answer(200, json.dumps(doc).encode(), delay, version=override)

    def render(self, request: Request, answer: Answer, *, close: bool) -> bytes:
        reason = _REASONS.get(answer.status, "Unknown")
        head = (
            f"HTTP/1.1 {answer.status} {reason}\r\nContent-Length: {len(answer.body)}\r\n".encode()
            + b"Content-Type: "
            + answer.content_type
            + b"\r\n"
            + (b"X-Version: " + answer.version + b"\r\n" if answer.version else self._version_header)
            + (b"Connection: close\r\n\r\n" if close else b"Connection: keep-alive\r\n\r\n")
        )
        return head if request.method == "HEAD" else head + answer.body

    def begin_shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown()
        self._check_drained()

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.closing and not self.connections:
            self.drained.set()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, app: DemoApp) -> None:
        self._app = app
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._in_message = False
        self._used = False
        self._paused = False
        self._url = b""
        self._user: str | None = None
        self._flags = ""
        self._body_len = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._app.connections.add(self)
        if self._app.closing:
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._app.forget(self)
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        self._used = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._reply_and_close(400, b'{"error": "bad request"}')
            return
        self._pump()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True
        self._url, self._user, self._body_len, self._flags = b"", None, 0, ""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"x-user-id":
            self._user = value.decode("latin-1")
        elif lower == b"x-turnout-flags":
            self._flags = value.decode("latin-1")
        elif lower == b"expect" and value.lower() == b"100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        method = self._parser.get_method().decode("latin-1")
        keep = self._parser.should_keep_alive()
        self._pending.append(Request(method, self._url, self._user, self._body_len, keep, self._flags))

    # answering
    @property
    def idle(self) -> bool:
        return self._worker is None and not self._pending and not self._in_message

    def shutdown(self) -> None:
        """Close now if idle; a busy connection closes after its current response."""
        if self._transport is None or not self.idle:
            return
        if self._used:
            self._transport.close()
        else:
            asyncio.get_running_loop().call_later(FRESH_GRACE_S, self._close_if_idle)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _close_if_idle(self) -> None:
        if self._transport is not None and self.idle:
            self._transport.close()

    def _pump(self) -> None:
        """Answer queued requests; hand off to a task when one must wait."""
        transport = self._transport
        assert transport is not None
        while self._pending and self._worker is None and not transport.is_closing():
            answer = self._app.answer(self._pending[0])
            if answer.delay_s > 0:
                self._worker = asyncio.create_task(self._delayed(answer))
                return
            self._send(self._pending.popleft(), answer)
        self._flow_control(transport)
        if self._app.closing and not transport.is_closing():
            self.shutdown()

    async def _delayed(self, answer: Answer) -> None:
        await asyncio.sleep(answer.delay_s)
        self._worker = None
        self._send(self._pending.popleft(), answer)
        self._pump()

    def _send(self, request: Request, answer: Answer) -> None:
        assert self._transport is not None
        close = self._app.closing or self._app.refusing.is_set() or not request.keep_alive
        self._transport.write(self._app.render(request, answer, close=close))
        self._app.served += 1
        if close:
            self._pending.clear()
            self._transport.close()

    def _flow_control(self, transport: asyncio.Transport) -> None:
        if len(self._pending) > 64 and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif len(self._pending) < 8 and self._paused:
            transport.resume_reading()
            self._paused = False

    def _reply_and_close(self, status: int, body: bytes) -> None:
        assert self._transport is not None
        request = Request("GET", b"", None, 0, keep_alive=False)
        self._transport.write(self._app.render(request, Answer(status, body), close=True))
        self._transport.close()


def _log(message: str) -> None:
    print(f"turnout-demo-app pid={os.getpid()} {message}", flush=True)


async def serve(app: DemoApp, host: str, port: int, *, drain_timeout: float = 5.0) -> None:
    """Listen until SIGTERM/SIGINT, then drain in-flight requests and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    version = app.behaviour.version
    if app.behaviour.startup_s > 0:
        try:
            await asyncio.wait_for(stop.wait(), app.behaviour.startup_s)
            _log(f"version={version} stopped before listening")
            return
        except TimeoutError:
            pass
    server = await loop.create_server(lambda: _Connection(app), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    _log(f"version={version} listening on http://{host}:{bound[1]}")
    stopped = asyncio.ensure_future(stop.wait())
    refusing = asyncio.ensure_future(app.refusing.wait())
    await asyncio.wait({stopped, refusing}, return_when=asyncio.FIRST_COMPLETED)
    if refusing.done() and not stopped.done():
        server.close()
        _log(f"version={version} refusing connections from now on (DEMO_FAIL=refuse)")
    await stopped
    refusing.cancel()
    server.close()
    app.begin_shutdown()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app.drained.wait(), drain_timeout)
    left = len(app.connections)
    for conn in list(app.connections):
        conn.abort()
    _log(f"version={version} stopped served={app.served} aborted={left}")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="turnout.demo.app", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "0"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", default=None, help="defaults to $TURNOUT_VERSION")
    parser.add_argument("--drain-timeout", type=float, default=5.0, help="seconds (default 5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        behaviour = Behaviour.from_env(os.environ, args.version)
    except ValueError as exc:
        print(f"turnout-demo-app: {exc}", file=sys.stderr)
        return 2
    if behaviour.fail == "start":
        _log(f"version={behaviour.version} failing at start (DEMO_FAIL=start)")
        return 1
    app = DemoApp(behaviour)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(app, args.host, args.port, drain_timeout=args.drain_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
