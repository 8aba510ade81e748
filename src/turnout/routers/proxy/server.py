"""The client side of the data path: one raw `asyncio.Protocol` per client connection.

httptools parses requests; at the end of the headers the request head is rebuilt (hop-by-hop
headers dropped, `X-Forwarded-For` extended, chunked bodies re-framed) and handed to an
`Exchange`. Pipelined requests queue behind the current exchange and reading from the client
pauses until they are served, so responses go back in order. `Proxy` is the worker-wide
state: the compiled plan in effect (swapped as one reference), counters and the idle pool.
When flags are evaluated (`proxy.flags`), the request's cohort adds its header line to the
head (any such header the client sent is dropped) and its counters to the exchange.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import Any, cast

from httptools import HttpParserError, HttpRequestParser

from turnout.flags import FlagState
from turnout.routers.proxy.balancer import Plan
from turnout.routers.proxy.exchange import BP_PENDING, BP_UPSTREAM, Exchange, canned
from turnout.routers.proxy.flags import FlagPlan, empty_settings
from turnout.routers.proxy.metrics import Metrics
from turnout.routers.proxy.upstream import ConnPool
from turnout.routers.table import RoutingTable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"x-forwarded-for",
    }
)
BP_PIPELINE = 4  # client reading paused: requests are queued behind the current one
IDLE_TIMEOUT = 75.0  # seconds a keep-alive client may sit without a request before it is closed
SWEEPS_PER_TIMEOUT = 5  # idle clients are found by a sweep, not by a timer per connection
RESPONSE_400 = canned(400, b"Bad Request")


class Proxy:
    """Worker-wide state shared by every connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: RoutingTable,
        flags: tuple[dict[str, Any], FlagState] | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        """`flags`: the flag settings and their compiled state (default: none evaluated)."""
        self.loop = loop
        self.sweep_every = idle_timeout / SWEEPS_PER_TIMEOUT
        self.metrics = Metrics()
        self.conns = ConnPool()
        self.clients: set[ClientConn] = set()
        self.draining = False
        self.all_closed = asyncio.Event()  # set once draining and no client is left
        self.addresses: dict[str, str] = {}  # listener name -> bound host:port
        if flags is None:
            settings = empty_settings()
            flags = settings, FlagState.from_json(settings["state"])
        self.plan = Plan.compile(table)
        self.flags: FlagPlan
        self.flagging: FlagPlan | None  # `flags` while it evaluates any flag, else None
        self.drop: frozenset[bytes]  # request headers not forwarded
        self.set_flags(*flags)
        self.conns.retain(self.plan.addresses)
        loop.call_later(self.sweep_every, self.sweep)

    def sweep(self) -> None:
        """Close keep-alive clients that sent nothing for a whole idle timeout.

        A request in progress is never idle. A client counts one tick per sweep without
        data and goes at the sweep after it has been quiet for the whole timeout (so
        between one timeout and one timeout plus a sweep after its last byte).
        """
        for client in list(self.clients):
            if client.current is not None:
                client.idle = 0
                continue
            client.idle += 1
            if client.idle > SWEEPS_PER_TIMEOUT:
                client.close()
        if not self.draining:
            self.loop.call_later(self.sweep_every, self.sweep)

    def swap(self, table: RoutingTable) -> None:
        """Put `table` in effect: compile first, then replace one reference."""
        plan = Plan.compile(table)
        plan.drop = self.drop
        self.plan = plan
        self.conns.retain(plan.addresses)

    def set_flags(self, settings: dict[str, Any], state: FlagState) -> None:
        """Put flag settings in effect (`state` is `settings["state"]` compiled)."""
        flags = FlagPlan(settings, state, self.metrics.combo)
        self.drop = HOP_BY_HOP | {flags.lheader}
        self.flags = flags
        self.flagging = flags if flags.names else None
        self.plan.drop = self.drop

    def drain(self) -> None:
        """Stop serving new requests; idle client connections close now."""
        self.draining = True
        for client in list(self.clients):
            if client.current is None:
                client.close()
        self.forget(None)

    def forget(self, client: ClientConn | None) -> None:
        if client is not None:
            self.clients.discard(client)
        if self.draining and not self.clients:
            self.all_closed.set()


class ClientConn(asyncio.Protocol):
    __slots__ = (
        "chunked", "closed", "current", "drop", "headers", "idle", "length", "parser", "paused", "peer",
        "preview", "proxy", "queue", "receiving", "started", "transport", "url", "want",
        "wanted", "write_paused", "xff", "xff_line",
    )

    def __init__(self, proxy: Proxy, *, preview: bool = False) -> None:
        self.proxy = proxy
        self.preview = preview
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = b"unknown"
        self.xff_line = b"X-Forwarded-For: unknown\r\n"
        self.closed = False
        self.idle = 0  # sweeps since the client last sent anything
        self.paused = 0
        self.write_paused = False
        self.current: Exchange | None = None
        self.receiving: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.on_message_begin()

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
            self.xff_line = b"X-Forwarded-For: %s\r\n" % self.peer
        self.proxy.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.idle = 0
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            if self.current is None:
                self.write(RESPONSE_400)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.forget(self)
        if self.current is not None:
            self.current.abort()
        self.current = None
        self.queue.clear()

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

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in self.drop:  # hop-by-hop, or the flags header, which only the proxy sets
            if lname == b"x-forwarded-for":
                self.xff = value
            elif lname == b"content-length":
                self.length = value
            elif lname == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            return
        self.headers += (name, b": ", value, b"\r\n")
        if lname in self.want:
            self.wanted[lname] = value

    def on_headers_complete(self) -> None:
        plan = self.proxy.plan
        parser = self.parser
        method: bytes = parser.get_method()
        flags = self.proxy.flagging
        if flags is None:
            pool = plan.preview if self.preview else plan.route_keyed(self.wanted)[0]
            exchange = Exchange(self, plan, pool, method, self._head(method))
        else:
            pool, key = plan.route_keyed(self.wanted)
            if self.preview:
                pool = plan.preview
            cache = flags.cache
            cohort = cache.get(key) if key is not None and cache is not None else None
            if cohort is None:
                cohort = flags.cohort(key, self.peer)
            self.headers.append(cohort.line)
            exchange = Exchange(self, plan, pool, method, self._head(method), cohort=cohort)
        self.receiving = exchange
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            self.pause(BP_PIPELINE)

    def _head(self, method: bytes) -> bytes:
        xff = self.xff_line
        if self.xff is not None:
            xff = b"X-Forwarded-For: %s, %s\r\n" % (self.xff, self.peer)
        if self.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.length is not None:
            framing = b"Content-Length: %s\r\n" % self.length
        else:
            framing = b""
        return b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (
            method, self.url, b"".join(self.headers), xff, framing
        )

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.body(body)

    def on_message_complete(self) -> None:
        exchange = self.receiving
        if exchange is not None:
            if exchange.chunked:
                exchange.request_complete()
            else:
                exchange.complete = True  # request_complete, inlined for the usual case

    # --- used by exchanges
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
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
