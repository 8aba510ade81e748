"""Exchanges that need more than the common path: HTTP/1.0 clients, upgrades, buffered bodies.

The client picks `SpecialExchange` only for such requests, so the common `Exchange` carries
none of this per request.

- HTTP/1.0: the connection's parser callbacks go to an `Http10Response`, which writes the
  re-framed response through `rewritten`; the raw bytes the connection reports are dropped.
- Upgrade (WebSocket and the like): the offer was forwarded; a `101` from the instance hands
  both connections to a `Tunnel`, with whatever the client sent after its request.
- Buffering (`buffer_requests`): the body is read whole before any backend is called, up to
  the limit (413 beyond it, or at once when the announced length is larger), so slow uploads
  cost the router memory rather than an app's worker.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from turnout.routers.proxy.balancer import BackendRef, PoolPlan
from turnout.routers.proxy.exchange import Exchange
from turnout.routers.proxy.tunnel import Tunnel
from turnout.routers.proxy.upstream import UpstreamConn

if TYPE_CHECKING:
    from turnout.routers.proxy.flags import Cohort
    from turnout.routers.proxy.server import ClientConn


class SpecialExchange(Exchange):
    __slots__ = ("body_size", "buffer", "held", "http10", "upgrade")

    def __init__(  # noqa: PLR0917  # the same arguments as Exchange, then what is special
        self,
        client: ClientConn,
        pool: PoolPlan | None,
        method: bytes,
        head: bytes,
        keep_alive: bool,
        cohort: Cohort | None,
        *,
        http10: bool,
        upgrade: bool,
        buffer: int | None,
    ) -> None:
        """`buffer`: the body bytes to read before calling a backend (-1: refuse), or None."""
        super().__init__(client, pool, method, head, keep_alive and not upgrade, cohort)
        self.http10 = http10
        self.upgrade: bytes | None = b"" if upgrade else None  # then: what the client sent after
        self.buffer = buffer
        self.body_size = 0
        self.held = 0  # bytes of body held here, counted in the worker's `buffered`

    # --- buffering
    def start(self) -> None:
        if self.buffer is not None and self._hold():
            return
        super().start()

    def _hold(self) -> bool:
        """True if the request waits for its body, or is refused (413)."""
        buffer = self.buffer
        assert buffer is not None
        if buffer < 0 or self.body_size > buffer:
            self.counters.requests += 1
            self._local(413, "request body over the buffer limit", close=True)
            return True
        if not self.complete:
            self.deferred = True  # request_complete starts it
            return True
        return False

    def body(self, chunk: bytes) -> None:
        if self.buffer is not None and not self.finished:
            self.body_size += len(chunk)
            if self.body_size > self.buffer and self.upstream is None:
                if self.deferred:  # started, waiting for this body: refused now
                    self.deferred = False
                    self._hold()
                return  # a queued exchange is refused when it starts
        super().body(chunk)

    def _send(self, data: bytes) -> None:
        if self.buffer is not None and self.upstream is None:
            self.pending.append(data)  # held whole, without pausing the client
            self.pending_size += len(data)
            proxy = self.proxy
            self.held += len(data)
            proxy.buffered += len(data)
            if proxy.buffered > proxy.max_buffered:  # all clients together: a bound on memory
                self._local(503, "the router holds as many request bodies as it may", close=True)
        else:
            super()._send(data)

    def _let_go(self) -> None:
        """The held body is sent or dropped: the worker holds that much less."""
        self.proxy.buffered -= self.held
        self.held = 0

    def _local(
        self, status: int, what: str, *, close: bool = False, error: BaseException | None = None
    ) -> None:
        if self.deferred:  # held for its body and not counted yet: it is now
            self.deferred = False
            self.counters.requests += 1
        self._let_go()
        super()._local(status, what, close=close, error=error)

    def abort(self) -> None:
        self._let_go()
        super().abort()

    def request_complete(self) -> None:
        super().request_complete()
        if self.deferred and not self.finished:
            self.deferred = False
            self.buffer = None  # the body is whole: nothing more to hold it for
            self.start()

    # --- HTTP/1.0
    def _attach(self, conn: UpstreamConn, backend: BackendRef) -> None:
        super()._attach(conn, backend)
        self._let_go()
        if self.http10:  # no answer can have come yet: the request was only just written
            conn.rewrite(self)

    def rewritten(self, data: bytes) -> None:
        if not self.first:
            self.first = perf_counter()
        self.responded = True
        self.client.write(data)

    def response_data(self, data: bytes) -> None:
        if not self.http10:
            super().response_data(data)

    def response_end(self, data: bytes, conn: UpstreamConn) -> None:
        if self.http10:
            self.response_done(conn)
        else:
            super().response_end(data, conn)

    def response_done(self, conn: UpstreamConn) -> None:
        if not self.http10:
            super().response_done(conn)
            return
        # Exchange.response_done, but the client's connection is kept as `Http10Response`
        # announced to it, whatever the instance does with its own.
        conn.plain()
        self._detach()
        self.finished = True
        if conn.keep_alive and self.complete:
            self.proxy.conns.release(conn)
        else:
            conn.close()
        self.counters.response(conn.status, (self.first or perf_counter()) - self.started)
        self.client.exchange_done(self, False)

    # --- upgrades
    def upgraded(self, data: bytes, conn: UpstreamConn) -> None:
        """The instance answered `101`: `data` holds that answer and what follows it."""
        if self.upgrade is None or self.http10:
            super().upgraded(data, conn)
            return
        self.finished = self.responded = True
        self.upstream = None  # the tunnel now holds the connection and its in-flight count
        self.counters.response(101, perf_counter() - self.started)
        client = self.client
        client.write(data)
        assert self.backend is not None and client.transport is not None and conn.transport is not None
        Tunnel(self.proxy, client.transport, conn.transport, self.backend.id).start(self.upgrade)
        conn.sink = None
        client.tunnelled()


def declared(length: bytes | None) -> int:
    """The body size a client announced (0 when chunked or unknown)."""
    try:
        return int(length) if length is not None else 0
    except ValueError:
        return 0
