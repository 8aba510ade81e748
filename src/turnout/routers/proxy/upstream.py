"""Connections to backends: one raw `asyncio.Protocol` per connection and the idle pool.

Response bytes are forwarded to the client exactly as they arrive; the httptools response
parser only finds the status, whether the connection may be kept, and the end of the
message. A HEAD response ends with its headers (the parser is replaced, since it would wait
for the announced body). For an HTTP/1.0 client an `Http10Response` takes the parser's
callbacks instead and writes the response re-framed. A `101` answer stops the parser
(`HttpParserUpgrade`) and is handed over whole to the exchange, which makes a tunnel.
Idle connections are pooled per backend address, capped, and dropped when their backend
leaves the table or the backend closes them.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from turnout.routers.proxy.balancer import BackendRef
from turnout.routers.proxy.http10 import Http10Response, Http10Sink

MAX_IDLE_PER_BACKEND = 64
NO_BODY_STATUSES = frozenset({204, 304})
CLOSED = HttpResponseParser(object())  # a closed connection's parser (see `connection_lost`)
FRAMING = re.compile(rb"\r\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)


class Sink(Protocol):
    """What an upstream connection reports to (the exchange it serves)."""

    def response_data(self, data: bytes) -> None: ...

    def response_end(self, data: bytes, conn: UpstreamConn) -> None: ...

    def response_done(self, conn: UpstreamConn) -> None: ...

    def upstream_lost(self, conn: UpstreamConn) -> None: ...

    def upgraded(self, data: bytes, conn: UpstreamConn) -> None: ...

    def fail(self, error: BaseException | None = None) -> None: ...

    def pause_client(self) -> None: ...

    def resume_client(self) -> None: ...


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to a backend, serving one exchange at a time."""

    __slots__ = (
        "address", "closed", "done", "got_bytes", "head", "head_bytes", "interim", "keep_alive",
        "parser", "pool", "quiet", "read_paused", "reused", "rewriter", "sink", "status", "transport",
    )

    def __init__(self, pool: ConnPool, address: str) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.sink: Sink | None = None
        self.reused = False
        self.closed = False
        self.read_paused = False
        self.quiet = 0  # sweeps without a byte from the instance (see `proxy.state`)
        self.rewriter: Http10Response | None = None
        self.attach(None, False)

    def attach(self, sink: Sink | None, head: bool) -> None:
        """Serve the exchange `sink` (one whose request is HEAD if `head`)."""
        self.sink = sink  # `quiet` is 0: the previous answer's last bytes reset it
        self.head = head
        self.got_bytes = False
        self.done = False
        self.status = 0
        self.keep_alive = True
        self.head_bytes = b""  # bytes up to the chunk that completed the final head
        self.interim = 0  # 1xx responses before the final one

    def rewrite(self, sink: Http10Sink) -> None:
        """Re-frame the coming response for an HTTP/1.0 client (see `proxy.http10`)."""
        self.rewriter = Http10Response(self, sink)
        self.parser = HttpResponseParser(self.rewriter)

    def plain(self) -> None:
        """Back to forwarding responses as they are, after a re-framed one."""
        self.rewriter = None
        self.parser = HttpResponseParser(self)

    def _framed(self) -> bool:
        """Whether the final response head announced its length (else the close ends it).

        Only needed when the backend closes mid-response, so the head is searched then rather
        than handing every header of every response to Python.
        """
        if self.status in NO_BODY_STATUSES:
            return True
        heads = self.head_bytes.split(b"\r\n\r\n", self.interim + 1)
        return FRAMING.search(heads[min(self.interim, len(heads) - 1)]) is not None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # a backend must not talk while idle
            self.close()
            return
        self.got_bytes = True
        self.quiet = 0
        if not self.status:
            self.head_bytes += data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(sink, data, int(exc.args[0]))
            return
        except HttpParserError:
            self.close()  # connection_lost reports it to the sink
            return
        try:
            if self.done:
                self.sink = None
                sink.response_end(data, self)
            else:
                sink.response_data(data)
        except Exception as exc:  # a bug of ours: this exchange fails, the worker goes on
            self.close()
            sink.fail(exc)

    def _upgraded(self, sink: Sink, data: bytes, offset: int) -> None:
        """The parser stopped at the end of a `101` head; the bytes after it are the new protocol's."""
        if self.status != 101 or self.rewriter is not None:
            self.close()  # connection_lost reports it to the sink
            return
        self.sink = None
        self.done = True
        sink.upgraded(data, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self.transport = None  # no cycle left for a collection to find: freed at once
        self.rewriter = None
        self.parser = CLOSED
        sink, self.sink = self.sink, None
        if sink is None or self.done:
            return
        try:
            if self.status and not self.head and not self._framed():
                self.done = True  # a response delimited by the end of the connection
                self.keep_alive = False
                sink.response_done(self)
            else:
                sink.upstream_lost(self)
        except Exception as error:  # a bug of ours: this exchange fails, the worker goes on
            sink.fail(error)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_client()

    def resume_writing(self) -> None:
        self.quiet = 0  # the instance took what we sent: not silent
        if self.sink is not None:
            self.sink.resume_client()

    # httptools callbacks (no on_header: headers are forwarded raw, never looked at one by one)
    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:  # switching protocols: the parser stops right after this head
            self.status = 101
            self.keep_alive = False
            return
        if status < 200:
            self.interim += 1
            return  # an interim response (100 Continue): the final one follows
        self.status = status
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.head:
            self.done = True
            self.parser = HttpResponseParser(self)

    def on_message_complete(self) -> None:
        if self.status and not self.head:
            self.done = True


class ConnPool:
    """Idle keep-alive connections per backend address."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_BACKEND) -> None:
        self.max_idle = max_idle
        self.idle: dict[str, list[UpstreamConn]] = {}
        self.live: frozenset[str] = frozenset()

    def take(self, address: str) -> UpstreamConn | None:
        conns = self.idle.get(address)
        while conns:
            conn = conns.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConn) -> None:
        conn.sink = None
        if conn.closed or conn.address not in self.live:
            conn.close()
            return
        conns = self.idle.get(conn.address)
        if conns is None:
            conns = self.idle[conn.address] = []
        elif len(conns) >= self.max_idle:
            conn.close()
            return
        if conn.read_paused:
            conn.resume_reading()
        conns.append(conn)

    def forget(self, conn: UpstreamConn) -> None:
        conns = self.idle.get(conn.address)
        if conns and conn in conns:
            conns.remove(conn)

    async def connect(self, backend: BackendRef, *, within: float) -> UpstreamConn:
        """A new connection to `backend`; TimeoutError after `within` seconds, OSError if refused."""
        loop = asyncio.get_running_loop()
        address = backend.address
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConn(self, address), backend.host, backend.port),
            within,
        )
        return conn

    def drop(self, address: str) -> None:
        """Close the idle connections to `address` (its host refused or lost a connect)."""
        for conn in self.idle.pop(address, ()):
            conn.close()

    def retain(self, addresses: frozenset[str]) -> None:
        """Keep only backends in `addresses`; idle connections to others are closed now."""
        self.live = addresses
        for address in [a for a in self.idle if a not in addresses]:
            self.drop(address)

    def close_all(self) -> None:
        self.retain(frozenset())
