"""The client side of the data path: one raw `asyncio.Protocol` per client connection.

httptools parses requests; at the end of the headers the request head is rebuilt (hop-by-hop
headers dropped, `X-Forwarded-For` extended, `X-Forwarded-Proto`/`-Host` added, chunked bodies
re-framed) and handed to an `Exchange`, or to an `Answer` when the router answers itself
(431 for a head over the limits, 405 for CONNECT, 502 when routing itself failed). Pipelined
requests queue behind the current exchange and reading from the client pauses until they
are served, so responses go back in order. When flags are evaluated (`proxy.flags`), the
request's cohort adds its header line to the head and its counters to the exchange.

The usual request (HTTP/1.1, no hop-by-hop or forwarding headers of its own, the same Host
as the connection's last one) takes the short path in `on_headers_complete`, with the
forwarding lines kept per connection. Anything else (`unusual`) goes through `_general`:
HTTP/1.0 clients and upgrades get a `SpecialExchange`; an `Upgrade` other than `h2c` is
forwarded, and the instance's `101` turns both connections into a `Tunnel`; an `h2c` offer
is dropped and the request answered as HTTP/1.1.

Limits cost almost nothing per request: the bytes of a head are charged against
`head_left` before httptools sees them, so an endless header is cut at the limit instead of
buffered (a pipelined head that begins within the read that ended the request before it is
charged from its next read on, so it may exceed the limit by less than one read), and the
header count is checked on the list that is joined anyway.
While a head is being read `started` holds when it began; deadlines are kept by
`Proxy.sweep` (see `proxy.state`), not by a timer per connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from turnout.routers.proxy.answers import Answer
from turnout.routers.proxy.balancer import PoolPlan
from turnout.routers.proxy.exchange import BP_PENDING, BP_UPSTREAM, Exchange
from turnout.routers.proxy.flags import Cohort
from turnout.routers.proxy.special import SpecialExchange, declared
from turnout.routers.proxy.state import HOP_BY_HOP, Proxy

BP_PIPELINE = 4  # client reading paused: requests are queued behind the current one
BP_UPGRADE = 8  # client reading paused: an upgrade waits for the instance's answer
NOT_IN_HEAD = 1 << 62  # `head_left` while no request head is being read
UNBORN = -2  # `head_left` until the first bytes come: the parser is made then (see `_limited`)
NO_HOST = b"\x00"  # `fwd_host` before any forwarding lines were kept (no Host equals it)
# A closed connection's parser: dropping the live one breaks the protocol <-> parser cycle, so
# the connection is freed at once by reference counting, not by a later collection.
CLOSED = HttpRequestParser(object())
PROTO_LINE = b"X-Forwarded-Proto: http\r\n"

__all__ = ["HOP_BY_HOP", "ClientConn", "Proxy"]


class ClientConn(asyncio.Protocol):
    __slots__ = (
        "chunked", "closed", "current", "drop", "fwd_host", "fwd_lines", "head_left", "headers", "idle",
        "length", "parser", "paused", "peer", "preview", "proxy", "queue", "receiving", "stalled", "started",
        "transport", "unusual", "url", "want", "wanted", "write_paused", "xff", "xff_line",
    )

    def __init__(self, proxy: Proxy, *, preview: bool = False) -> None:
        self.proxy = proxy
        self.preview = preview
        self.parser = CLOSED  # a connection that never sends costs no parser
        self.transport: asyncio.Transport | None = None
        self.peer = b"unknown"
        self.xff_line = b"X-Forwarded-For: unknown\r\n"
        self.fwd_host = NO_HOST  # the Host the kept forwarding lines are for
        self.fwd_lines = b""
        self.closed = False
        self.idle = 0  # sweeps since the client last sent anything
        self.stalled = 0  # sweeps its answer has waited, unread, in our write buffer
        self.paused = 0
        self.write_paused = False
        self.head_left = UNBORN  # head bytes still allowed; -1: take no more bytes
        self.current: Exchange | Answer | None = None
        self.receiving: Exchange | Answer | None = None
        self.queue: deque[Exchange | Answer] | None = None  # made when a request is pipelined
        self.started = perf_counter()  # a new connection owes its first head within the deadline
        self.on_message_begin()

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
            self.xff_line = b"X-Forwarded-For: %s\r\n" % self.peer
        proxy = self.proxy
        if proxy.connections() >= proxy.max_connections:
            self.head_left = -1
            self._refuse_now(self._answer(503, "over the connection limit"))
            return
        proxy.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.idle = 0
        size = len(data)
        if size > self.head_left:
            self._limited(data)
            return
        self.head_left -= size
        try:  # _feed, inlined for the usual case
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data, int(exc.args[0]))
        except HttpParserCallbackError as exc:
            self._internal_error(exc.__context__ or exc)
        except HttpParserError:
            self._refuse(400, "malformed request")

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data, int(exc.args[0]))
        except HttpParserCallbackError as exc:
            self._internal_error(exc.__context__ or exc)
        except HttpParserError:
            self._refuse(400, "malformed request")

    def _limited(self, data: bytes) -> None:
        """`data` is more than the head in progress may still take: feed what it may take,
        then carry on if the head ended within it, else answer 431."""
        allowed = self.head_left
        if allowed == UNBORN:  # the first bytes: now the connection needs a parser
            self.parser = HttpRequestParser(self)
            self.head_left = self.proxy.max_head
            self.data_received(data)
            return
        if allowed < 0:  # the parser takes nothing more: an answer ends this connection
            return
        self.head_left = 0
        self._feed(data[:allowed])
        if self.head_left < 0 or self.closed:
            return
        if self.head_left == 0:
            self._refuse(431, "request head over the size limit")
        else:
            self.data_received(data[allowed:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.forget(self)
        if self.current is not None:
            self.current.abort()
        self.current = self.receiving = None
        self.queue = None
        self.parser = CLOSED
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.current is not None and self.current.upstream is not None:
            self.current.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.current is not None and self.current.upstream is not None:
            self.current.upstream.resume_reading()

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        if not self.started:  # (a new connection's clock runs from its start)
            self.started = perf_counter()  # uvloop's clock ticks in milliseconds
        self.url = b""
        self.headers: list[bytes] = []  # name, b": ", value, CRLF, ... joined once
        plan = self.proxy.plan
        self.want = plan.wanted
        self.drop = plan.drop
        self.wanted: dict[bytes, bytes] = {}
        self.xff: bytes | None = None
        self.length: bytes | None = None
        self.chunked = False
        self.unusual = plan.buffering  # True: this request takes the general path

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in self.drop:  # hop-by-hop, forwarding, or the flags header only the proxy sets
            if lname == b"content-length":
                self.length = value
            elif lname == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif lname == b"x-forwarded-for":
                self.xff = value
                self.unusual = True
            else:  # Connection, Upgrade, X-Forwarded-Proto/-Host...: read by _general
                self.wanted[lname] = value
                self.unusual = True
            return
        self.headers += (name, b": ", value, b"\r\n")
        if lname in self.want:
            self.wanted[lname] = value

    def on_headers_complete(self) -> None:
        """Route the request and build the head the instance gets (the usual case inlined)."""
        self.head_left = NOT_IN_HEAD
        exchange: Exchange | Answer
        pool: PoolPlan | None = None
        try:  # a bug in routing is answered 502 and counted (for its revision if known), never 400
            proxy = self.proxy
            plan = proxy.plan
            parser = self.parser
            headers = b"".join(self.headers)
            method: bytes = parser.get_method()
            keep_alive: bool = parser.should_keep_alive()
            if len(self.headers) > proxy.max_header_items:  # the size was checked as bytes came in
                exchange = self._answer(431, "too many header lines")
            elif method == b"CONNECT":
                exchange = self._answer(405, "CONNECT is not proxied")
            else:
                flags = proxy.flagging
                if flags is None:
                    pool = plan.preview if self.preview else plan.route_keyed(self.wanted)[0]
                    cohort = None
                else:
                    pool, key = plan.route_keyed(self.wanted)
                    if self.preview:
                        pool = plan.preview
                    cache = flags.cache
                    cohort = cache.get(key) if key is not None and cache is not None else None
                    if cohort is None:
                        cohort = flags.cohort(key, self.peer)
                    headers += cohort.line
                if self.unusual or not keep_alive or self.wanted.get(b"host") != self.fwd_host:
                    exchange = self._general(method, headers, pool, keep_alive, cohort)
                else:
                    if self.chunked:
                        framing = b"Transfer-Encoding: chunked\r\n"
                    elif self.length is not None:
                        framing = b"Content-Length: %s\r\n" % self.length
                    else:
                        framing = b""
                    head = b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (
                        method, self.url, headers, self.fwd_lines, framing)
                    exchange = Exchange(self, pool, method, head, keep_alive, cohort)
        except Exception as exc:
            exchange = self._answer(502, "router error", error=exc, pool=pool)
        self.started = 0.0  # no head in progress
        self.receiving = exchange
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self._queued(exchange)
            self.pause(BP_PIPELINE)

    def _general(
        self, method: bytes, headers: bytes, pool: PoolPlan | None, keep_alive: bool, cohort: Cohort | None
    ) -> Exchange:
        """The exchange of a request off the usual path (see the module doc)."""
        parser = self.parser
        wanted = self.wanted
        http10 = (not keep_alive or b"connection" in wanted) and parser.get_http_version() == "1.0"
        upgrade = b"" if http10 else self._upgrade_lines()
        if self.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.length is not None:
            framing = b"Content-Length: %s\r\n" % self.length
        else:
            framing = b""
        head = b"%s %s HTTP/1.1\r\n%s%s%s%s\r\n" % (
            method, self.url, headers, self._forwarded(), upgrade, framing)
        limit = self.proxy.buffer_limit
        buffer = None
        if limit is not None and (self.chunked or self.length not in (None, b"0")):
            buffer = -1 if declared(self.length) > limit else limit
        if not (http10 or upgrade or buffer is not None):
            return Exchange(self, pool, method, head, keep_alive, cohort)
        return SpecialExchange(self, pool, method, head, keep_alive, cohort,
                               http10=http10, upgrade=bool(upgrade), buffer=buffer)

    def _upgrade_lines(self) -> bytes:
        """The upgrade to forward: any protocol the client offers but `h2c`, which is dropped
        (the request is then served as HTTP/1.1, as RFC 9113 lets a server do)."""
        upgrade = self.wanted.get(b"upgrade")
        connection = self.wanted.get(b"connection", b"").lower()
        if upgrade is None or b"upgrade" not in connection or upgrade.strip().lower() == b"h2c":
            return b""
        return b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade

    def _forwarded(self) -> bytes:
        """X-Forwarded-For (extended), -Proto and -Host lines, and a Host where there was none.

        A client's own X-Forwarded-Proto and -Host are kept if the table trusts them. The
        lines for a client that sent none of them depend only on its address and Host, so
        they are kept for the connection's next requests.
        """
        wanted = self.wanted
        host = wanted.get(b"host")
        lines = self.xff_line if self.xff is None else b"X-Forwarded-For: %s, %s\r\n" % (self.xff, self.peer)
        if host is None:  # an HTTP/1.0 client: instances speaking HTTP/1.1 want a Host
            host = self.proxy.host_of(self.preview)
            lines += b"Host: %s\r\n" % host
        trusted = self.proxy.plan.table.trust_forwarded
        proto = wanted.get(b"x-forwarded-proto") if trusted else None
        lines += PROTO_LINE if proto is None else b"X-Forwarded-Proto: %s\r\n" % proto
        forwarded_host = (wanted.get(b"x-forwarded-host") if trusted else None) or host
        lines += b"X-Forwarded-Host: %s\r\n" % forwarded_host
        if not self.unusual and b"host" in wanted:
            self.fwd_host, self.fwd_lines = host, lines
        return lines

    def on_body(self, body: bytes) -> None:
        self.head_left = NOT_IN_HEAD  # body bytes, not a chunk's size line or trailers
        if self.receiving is not None:
            self.receiving.body(body)

    def on_chunk_header(self) -> None:
        """A chunk's size line: what follows may be the last chunk's trailers, which count
        against the head limit (they end up in a buffer like headers do) until body bytes come."""
        self.head_left = self.proxy.max_head

    def on_message_complete(self) -> None:
        self.head_left = self.proxy.max_head
        exchange = self.receiving
        if exchange is not None:
            if exchange.chunked or exchange.deferred:
                exchange.request_complete()
            else:
                exchange.complete = True  # request_complete, inlined for the usual case

    # --- answers the router makes itself
    def _answer(
        self, status: int, reason: str, *, error: BaseException | None = None, pool: PoolPlan | None = None
    ) -> Answer:
        metrics = self.proxy.metrics
        counters = metrics.revision(pool.revision) if pool is not None else metrics.unrouted
        return Answer(self, status, counters, reason, error=error)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` after the responses already due, then close; read nothing more.

        When the bytes at fault are the body of the request in progress, that request is
        the one refused (its instance will get no more of it).
        """
        self.head_left = -1
        self.started = 0.0
        receiving = self.receiving
        if receiving is not None and not receiving.complete:
            if receiving is self.current:
                receiving.refuse(status, reason)
                return
            if self.queue is not None and receiving in self.queue:
                self.queue.remove(receiving)  # never started: the answer takes its place
        answer = self._answer(status, reason)
        if self.current is None:
            self._refuse_now(answer)
        else:
            self._queued(answer)
            self.pause(BP_PIPELINE)

    def _internal_error(self, error: BaseException) -> None:
        """An exception in our own parser callbacks: 502 (or a cut, if an answer has begun)."""
        self.head_left = -1
        self.started = 0.0
        self.queue = None
        current = self.current
        if current is None:
            self._refuse_now(self._answer(502, "router error", error=error))
        else:
            current.fail(error)

    def _queued(self, exchange: Exchange | Answer) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(exchange)

    def _refuse_now(self, answer: Answer) -> None:
        self.current = answer
        answer.start()

    def _upgraded(self, data: bytes, offset: int) -> None:
        """The parser stopped after a request offering an upgrade (or a CONNECT)."""
        exchange = self.receiving
        rest = data[offset:]
        if isinstance(exchange, SpecialExchange) and exchange.upgrade is not None:
            exchange.upgrade = rest  # bytes the client sent before the instance said yes
            self.head_left = -1
            self.pause(BP_UPGRADE)
            return
        if isinstance(exchange, Answer):
            self.head_left = -1
            return
        self.parser = HttpRequestParser(self)  # not taken (h2c): carry on with HTTP/1.1
        if rest:
            self.data_received(rest)

    # --- used by exchanges, tunnels and the sweep
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def exchange_done(self, exchange: Exchange | Answer, close: bool) -> None:
        if exchange is not self.current:
            return
        if self.paused:
            self.resume(BP_UPSTREAM | BP_PENDING)
        if close or not exchange.keep_alive or self.proxy.draining:
            self.current = None
            self.close()
            return
        if self.queue:
            self.current = self.queue.popleft()
            self.current.start()
        else:
            self.current = None
            if self.paused:
                self.resume(BP_PIPELINE)

    def tunnelled(self) -> None:
        """Both connections now belong to a tunnel: this protocol gets no more callbacks."""
        self.closed = True
        self.current = self.receiving = None
        self.queue = None
        self.proxy.clients.discard(self)
        self.parser = CLOSED
        self.transport = None

    def head_timeout(self) -> None:
        """The head in progress took longer than `timeouts.header`."""
        self.started = 0.0
        if self.current is None:
            self._refuse(408, "request head not received in time")
        else:
            self.proxy.note(408, self.peer, "pipelined request head not received in time")
            self.close()

    def pause(self, flag: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= flag

    def resume(self, flags: int) -> None:
        if not self.paused & flags:
            return
        self.paused &= ~flags
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
