"""The bundled sample web app: a tiny HTTP/1.1 service that demos and tests deploy.

`python -m turnout.demo.app --port PORT` serves `GET /healthz`, `GET /metrics` for
Prometheus (`turnout.demo.app_metrics`: requests, latency, and checkouts, of which
DEMO_CHECKOUT_FAIL_RATE=0.3 fails that share behind a 200) and a JSON echo on every
other path, stamped with its version (`TURNOUT_VERSION` or `--version`) in the body and
in an `X-Version` header. Environment variables, read once at start, make it misbehave
on purpose so that deployments have something to roll back from:

    DEMO_FAIL=start      exit 1 at once          DEMO_ERROR_RATE=0.2  that share of 500s
    DEMO_FAIL=health     500 on /healthz         DEMO_LATENCY_MS=N    N ms more per request
    DEMO_FAIL=errors     500 on everything else  DEMO_STARTUP_MS=N    sleep before listening
    DEMO_FAIL=refuse     pass the first health check, then close the listening socket:
                         every later connection is refused (the process keeps running)
    DEMO_FAIL=hang       take every request but /healthz and never answer it (/healthz: 200)
    DEMO_CRASH_AFTER=N   exit 1 at once after answering N requests other than /healthz

With DEMO_FEATURE=FLAG, a request the router marks `FLAG=on` takes the new code path
(answered as `<version>+FLAG`), and DEMO_FEATURE_FAIL=errors|hang, DEMO_FEATURE_ERROR_RATE,
DEMO_FEATURE_LATENCY_MS and DEMO_FEATURE_CRASH_AFTER (counting only that path's answers)
break that path alone. With DEMO_FLAGS_URL=URL (a `turnout server`, http:// or https://)
and DEMO_FLAGS_TOKEN=TOKEN (a client token of it) as well, the app evaluates the flag
itself instead, with turnout's flag client (`turnout.flags.client.FlagClient`) for each
request's X-User-Id, and ignores X-Turnout-Flags; it waits up to `FIRST_STATE_S` for the
client's first state before listening (without one, the flag is off until it comes), and
a flag change reaches it over the client's event stream. With DEMO_FEATURE, `/metrics`
also counts requests by cohort (`turnout.demo.app_metrics`). A bad value exits 2 naming
the variable.

The request path is an asyncio protocol over httptools (no framework), so one core serves
thousands of requests a second. SIGTERM/SIGINT stop it gracefully: the listener closes,
idle keep-alive connections are closed, busy ones finish their response with
`Connection: close`, and the process exits 0 once they are done (or after the drain
timeout, whichever comes first).

This module is the process (arguments, listening, the stop); what it answers is
`turnout.demo.app_answers`, and one client connection `turnout.demo.app_connection`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from turnout.demo.app_answers import Behaviour, DemoApp
from turnout.demo.app_connection import AppConnection
from turnout.demo.app_metrics import AppMetrics

FIRST_STATE_S = 5.0  # how long the app waits for its flag client's first state before listening


def _log(message: str) -> None:
    print(f"turnout-demo-app pid={os.getpid()} {message}", flush=True)


def flag_source(env: Mapping[str, str], feature: str) -> tuple[str, str] | None:
    """The turnout server and client token the app evaluates `feature` with (DEMO_FLAGS_URL,
    DEMO_FLAGS_TOKEN), or None to go by X-Turnout-Flags; ValueError names a bad variable."""
    url = env.get("DEMO_FLAGS_URL", "").strip()
    token = env.get("DEMO_FLAGS_TOKEN", "").strip()
    if not url:
        if token:
            raise ValueError("DEMO_FLAGS_TOKEN needs DEMO_FLAGS_URL, the turnout server it is a token of")
        return None
    try:
        parts = urlsplit(url)
        good = (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
                and not parts.fragment and (parts.port is None or parts.port > 0))
    except ValueError:  # a port out of range
        good = False
    if not good:
        raise ValueError("DEMO_FLAGS_URL must be the http:// or https:// base URL of a turnout server; "
                         f"got {url!r}")
    if not feature:
        raise ValueError("DEMO_FLAGS_URL needs DEMO_FEATURE, the flag the app evaluates with it")
    if not token:
        raise ValueError("DEMO_FLAGS_URL needs DEMO_FLAGS_TOKEN, a client token of that server")
    return url, token


async def _first_flag_state(ready: Callable[[float], bool], stop: asyncio.Event, version: str) -> bool:
    """Wait up to FIRST_STATE_S until `ready(0)` (the flag client holds a state); False if
    stopped meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_STATE_S
    while not ready(0):
        if loop.time() >= deadline:
            _log(f"version={version} no flag state within {FIRST_STATE_S:g} s: "
                 "the flag is off until one comes")
            return True
        try:
            await asyncio.wait_for(stop.wait(), 0.01)
            return False
        except TimeoutError:
            pass
    _log(f"version={version} flag state received")
    return True


async def serve(app: DemoApp, host: str, port: int, *, drain_timeout: float = 5.0,
                flags_ready: Callable[[float], bool] | None = None) -> None:
    """Listen until SIGTERM/SIGINT, then drain in-flight requests and return. `flags_ready`
    (a flag client's `wait_for_state`) is waited on, within FIRST_STATE_S, before listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    version = app.behaviour.version
    if flags_ready is not None and not await _first_flag_state(flags_ready, stop, version):
        _log(f"version={version} stopped before listening")
        return
    if app.behaviour.startup_s > 0:
        try:
            await asyncio.wait_for(stop.wait(), app.behaviour.startup_s)
            _log(f"version={version} stopped before listening")
            return
        except TimeoutError:
            pass
    server = await loop.create_server(lambda: AppConnection(app), host, port, backlog=1024)
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
        metrics = AppMetrics.from_env(os.environ, behaviour.version, behaviour.feature)
        source = flag_source(os.environ, behaviour.feature)
    except ValueError as exc:
        print(f"turnout-demo-app: {exc}", file=sys.stderr)
        return 2
    if behaviour.fail == "start":
        _log(f"version={behaviour.version} failing at start (DEMO_FAIL=start)")
        return 1
    client = None
    if source is not None:
        from turnout.flags.client import FlagClient  # only then: it brings httpx

        client = FlagClient(*source)
        client.start()
    app = DemoApp(behaviour, flags=client)
    app.metrics = metrics
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve(app, args.host, args.port, drain_timeout=args.drain_timeout,
                             flags_ready=client.wait_for_state if client else None))
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
