"""The load generator's connections: a small pool of raw keep-alive HTTP/1.1 connections.

Each connection carries one request at a time and parses the answer with httptools,
keeping only the status and the `X-Version` header, so a few hundred requests a second
cost little CPU next to the router under test. Like a browser, the pool re-sends a
request once on a fresh connection when a reused keep-alive connection closes before
any byte of the answer arrives (the server had closed it while idle), and tells the
caller so; every other failure is raised as is, to be recorded by `turnout.demo.load`.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools


class Dropped(Exception):
    """The server closed the connection before a complete answer."""

    def __init__(self, *, received: bool, reset: bool = False) -> None:
        super().__init__("connection reset" if reset else "connection closed")
        self.received = received


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, Dropped):
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
        self._fail(Dropped(received=self._received, reset=exc is not None))

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


class Pool:
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
            except Dropped as exc:
                if not reused or exc.received:
                    raise
                lost.append(describe(exc))
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
