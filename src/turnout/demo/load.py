"""The load generator that demos and tests put on a service while it is being deployed.

`Load` sends `GET` requests at a constant rate (open loop: a slow answer never delays
the next request) to a local URL, each carrying a user key header that goes round-robin
over `users` users, and records one `Sample` per answer: when it was sent and done, the
status, the version from the `X-Version` response header, and how many sends it took.
`summarize` turns the samples into what a deployment is judged by: failures, re-sends,
the longest time without a successful answer, how many users saw the new version before
the cutover, and which versions served at the end.

Requests go over a small pool of raw keep-alive connections parsed with httptools, not
an HTTP client library, so a few hundred requests a second cost little CPU next to the
router under test. Like a browser, the pool re-sends a request once on a fresh
connection when a reused keep-alive connection closes before any byte of the answer
arrives (the server had closed it while idle); every other failure is recorded as is.
A re-send is never hidden: the sample says the request took two sends and why the first
was lost, the summary counts re-sends beside failures, and `LoadSummary.clean` holds only
when every request was answered, without a 5xx, on its first send.

Everything is bounded: at most `max_requests` requests and `max_seconds` seconds, each
request at most `timeout` seconds, and only 127.0.0.1/localhost may be targeted.
Times are `time.monotonic()` seconds; `mark()` records one under a name. Both clocks
are read once when the load starts, so `wall()` maps a sample's times onto wall-clock
records kept elsewhere (a flag's audit trail, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

LOCAL_HOSTS = ("127.0.0.1", "localhost")
TAIL_S = 1.0  # last_versions looks at answers completed in this final window


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: `status` is None and `error` says why when no answer came.

    `sends` is 2 when the first send was lost on a reused keep-alive connection and the
    request went out again on a fresh one; `lost` then says how the first was lost.
    """

    sent: float
    done: float
    status: int | None
    version: str | None
    user: str
    error: str | None
    sends: int = 1
    lost: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500

    @property
    def resent(self) -> bool:
        return self.sends > 1


@dataclass(frozen=True, slots=True)
class LoadSummary:
    requests: int
    failed: int
    resent: int
    longest_gap_s: float
    exposed_users: int
    versions: dict[str, int]
    last_versions: dict[str, int]
    errors: dict[str, int]
    resent_errors: dict[str, int]

    @property
    def clean(self) -> bool:
        """Every request answered on its first send, none with a 5xx: what a deployment must show."""
        return self.failed == 0 and self.resent == 0

    def problems(self) -> str:
        """What kept the run from being clean, e.g. `failed 2 (HTTP 503: 2); re-sent 1 (...)`."""
        parts = [f"{label} {count} ({_kinds(kinds)})"
                 for label, count, kinds in (("failed", self.failed, self.errors),
                                             ("re-sent", self.resent, self.resent_errors))
                 if count]
        return "; ".join(parts) or "none"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))


def summarize(
    samples: Iterable[Sample],
    *,
    new_version: str,
    start: float,
    end: float,
    until: float | None = None,
) -> LoadSummary:
    """Judge a run that sent requests from `start` to `end` (monotonic seconds).

    `longest_gap_s` is the longest stretch of [start, end] in which no successful
    answer completed. `exposed_users` counts users who got an answer from
    `new_version` strictly before `until` (every such user when `until` is None).
    `versions` counts answers per `X-Version`, whatever their status; `last_versions`
    does the same for answers completed in the final second; `errors` counts failures
    by kind (`HTTP 503`, `timeout`, `connection refused`, ...). `resent` counts requests
    that took more than one send, answered or not, and `resent_errors` how their first
    send was lost; a re-sent request that then failed counts in both.
    """
    samples = list(samples)
    successes = sorted(s.done for s in samples if not s.failed and start <= s.done <= end)
    gap = max((b - a for a, b in pairwise([start, *successes, max(start, end)])), default=0.0)
    exposed = {
        s.user for s in samples if s.version == new_version and (until is None or s.done < until)
    }
    errors = Counter(
        f"HTTP {s.status}" if s.status is not None else s.error or "no answer"
        for s in samples
        if s.failed
    )
    resent = Counter(s.lost or "lost" for s in samples if s.resent)
    return LoadSummary(
        requests=len(samples),
        failed=sum(errors.values()),
        resent=sum(resent.values()),
        longest_gap_s=gap,
        exposed_users=len(exposed),
        versions=dict(Counter(s.version for s in samples if s.version is not None)),
        last_versions=dict(
            Counter(s.version for s in samples if s.version is not None and s.done >= end - TAIL_S)
        ),
        errors=dict(errors),
        resent_errors=dict(resent),
    )


class _Dropped(Exception):
    """The server closed the connection before a complete answer."""

    def __init__(self, *, received: bool, reset: bool = False) -> None:
        super().__init__("connection reset" if reset else "connection closed")
        self.received = received


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, _Dropped):
        return str(exc)
    if isinstance(exc, httptools.HttpParserError):
        return "bad response"
    return type(exc).__name__


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self._version: str | None = None
        self._received = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Dropped(received=self._received, reset=exc is not None))

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-version":
            self._version = value.decode("latin-1")

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._version))

    async def exchange(self, raw: bytes) -> tuple[int, str | None]:
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._version, self._received = None, False
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class _Pool:
    """At most `size` connections to one address; idle ones are reused."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(self, raw: bytes, lost: list[str]) -> tuple[int, str | None]:
        """Send `raw` and return (status, version); a lost first send is added to `lost`."""
        async with self._slots:
            conn, reused = await self._checkout(fresh=False)
            try:
                return await self._exchange(conn, raw)
            except _Dropped as exc:
                if not reused or exc.received:
                    raise
                lost.append(_describe(exc))
            conn, _ = await self._checkout(fresh=True)  # stale keep-alive: re-send once
            return await self._exchange(conn, raw)

    async def _exchange(self, conn: _Connection, raw: bytes) -> tuple[int, str | None]:
        try:
            answer = await conn.exchange(raw)
        except BaseException:
            self._discard(conn)
            raise
        if conn.closed:
            self._discard(conn)
        else:
            self._idle.append(conn)
        return answer

    async def _checkout(self, *, fresh: bool) -> tuple[_Connection, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._open.discard(conn)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self._host, self._port)
        self._open.add(conn)
        return conn, False

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def close(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()


def _local_target(url: str) -> tuple[int, str, str]:
    """(port, Host header, request target) of a local http URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"load can only target http:// URLs, not {url!r}")
    if parts.hostname not in LOCAL_HOSTS:
        raise ValueError(f"load may only target 127.0.0.1 or localhost, not {parts.hostname!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.port or 80, parts.netloc, target


class Load:
    """Constant-rate, open-loop, bounded load on a local URL (an async context manager)."""

    def __init__(
        self,
        url: str,
        *,
        rate: float = 200.0,
        users: int = 100,
        max_requests: int = 200_000,
        max_seconds: float = 600.0,
        user_header: str = "X-User-Id",
        connections: int = 16,
        timeout: float = 5.0,
    ) -> None:
        port, host_header, target = _local_target(url)
        if rate <= 0 or users < 1 or max_requests < 0 or max_seconds < 0:
            raise ValueError("rate and users must be positive, the bounds not negative")
        if connections < 1 or timeout <= 0:
            raise ValueError("connections and timeout must be positive")
        if any(c in user_header for c in "\r\n:") or not user_header:
            raise ValueError(f"invalid user header name {user_header!r}")
        self.url, self.rate, self.users = url, rate, users
        self.max_requests, self.max_seconds, self.timeout = max_requests, max_seconds, timeout
        self.samples: list[Sample] = []
        self.marks: dict[str, float] = {}
        self.started: float | None = None
        self.started_wall: float | None = None  # time.time() read together with `started`
        self.ended: float | None = None  # when sending stopped
        self._port, self._connections = port, connections
        self._raw = [
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n{user_header}: u{i}\r\n\r\n".encode()
            for i in range(users)
        ]
        self._pool: _Pool | None = None
        self._sender: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Load:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Begin sending in the background (needs a running event loop)."""
        if self._sender is not None:
            raise RuntimeError("this Load was already started")
        self._pool = _Pool("127.0.0.1", self._port, self._connections)
        self.started_wall, self.started = time.time(), time.monotonic()
        self._sender = asyncio.create_task(self._send_all(self.started))

    async def finished(self) -> None:
        """Wait until the load reaches one of its bounds by itself."""
        if self._sender is not None:
            await asyncio.wait({self._sender})

    async def stop(self) -> None:
        """Stop sending and wait (at most `timeout` + 1 s) for outstanding requests."""
        if self._sender is None:
            return
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        if self._inflight:
            _, late = await asyncio.wait(self._inflight, timeout=self.timeout + 1.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._pool is not None:
            self._pool.close()

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def wall(self, moment: float) -> float:
        """The wall-clock time (`time.time()`) of monotonic `moment` during this load."""
        if self.started is None or self.started_wall is None:
            raise RuntimeError("this Load has not started")
        return self.started_wall + (moment - self.started)

    def summary(self, *, new_version: str, until: float | None = None) -> LoadSummary:
        now = time.monotonic()
        start = self.started if self.started is not None else now
        end = self.ended if self.ended is not None else now
        return summarize(self.samples, new_version=new_version, start=start, end=end, until=until)

    async def _send_all(self, start: float) -> None:
        deadline = start + self.max_seconds
        sent = 0
        try:
            while sent < self.max_requests:
                now = time.monotonic()
                if now >= deadline:
                    break
                due = min(self.max_requests, int((now - start) * self.rate) + 1)
                for index in range(sent, due):
                    task = asyncio.create_task(self._one(self._raw[index % self.users], index))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                sent = max(sent, due)
                next_at = min(start + sent / self.rate, deadline)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            self.ended = time.monotonic()

    async def _one(self, raw: bytes, index: int) -> None:
        assert self._pool is not None
        sent = time.monotonic()
        status: int | None = None
        version: str | None = None
        error: str | None = None
        lost: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                status, version = await self._pool.request(raw, lost)
        except (TimeoutError, OSError, _Dropped, httptools.HttpParserError) as exc:
            error = _describe(exc)
        user = f"u{index % self.users}"
        self.samples.append(Sample(sent, time.monotonic(), status, version, user, error,
                                   sends=1 + len(lost), lost=lost[0] if lost else None))
