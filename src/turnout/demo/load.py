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
request at most `timeout` seconds, and only 127.0.0.1/localhost may be targeted (or,
with `private_network=True`, a private IPv4 address: the test hosts' network).
Times are `time.monotonic()` seconds; `mark()` records one under a name. Both clocks
are read once when the load starts, so `wall()` maps a sample's times onto wall-clock
records kept elsewhere (a flag's audit trail, logs).

This module paces and bounds the requests; the samples and their judging are in
`turnout.demo.load_summary` (re-exported here), the connection pool in
`turnout.demo.load_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from types import TracebackType
from urllib.parse import urlsplit

import httptools

from turnout.demo.load_pool import Dropped, Pool, describe
from turnout.demo.load_summary import LoadSummary, Sample, summarize

__all__ = ["LOCAL_HOSTS", "Load", "LoadSummary", "Sample", "summarize"]

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _target(url: str, *, private_network: bool) -> tuple[str, int, str, str]:
    """(address, port, Host header, request target) of a local http URL (or, with
    `private_network`, one at a private IPv4 address); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"load can only target http:// URLs, not {url!r}")
    host = parts.hostname or ""
    if host not in LOCAL_HOSTS and not (private_network and _private_ipv4(host)):
        allowed = "127.0.0.1, localhost" + (" or a private IPv4 address" if private_network else "")
        raise ValueError(f"load may only target {allowed}, not {host!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    address = "127.0.0.1" if host in LOCAL_HOSTS else host
    return address, parts.port or 80, parts.netloc, target


def _private_ipv4(host: str) -> bool:
    """An address of a private network (10/8, 172.16/12, 192.168/16), never a name."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return any(address in ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


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
        private_network: bool = False,
    ) -> None:
        address, port, host_header, target = _target(url, private_network=private_network)
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
        self._address, self._port, self._connections = address, port, connections
        self._raw = [
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n{user_header}: u{i}\r\n\r\n".encode()
            for i in range(users)
        ]
        self._pool: Pool | None = None
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
        self._pool = Pool(self._address, self._port, self._connections)
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
        except (TimeoutError, OSError, Dropped, httptools.HttpParserError) as exc:
            error = describe(exc)
        user = f"u{index % self.users}"
        self.samples.append(Sample(sent, time.monotonic(), status, version, user, error,
                                   sends=1 + len(lost), lost=lost[0] if lost else None))
