"""One proxied request/response exchange: backend choice, retries, streaming, counting.

Request bytes wait in `pending` until a backend connection is attached, then stream
through. While the request stays small (`RETAIN_MAX`) a copy is kept so that an idempotent
request that dies on a reused keep-alive connection before any response byte can be sent
again on a fresh connection; larger requests whose body has already streamed are not
retried (the client gets 502). A failed connect is retried on another backend of the same
pool first, then of any pool, up to `MAX_ATTEMPTS` backends in all.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING

from turnout.routers.proxy.balancer import BackendRef, Plan, PoolPlan
from turnout.routers.proxy.upstream import UpstreamConn

if TYPE_CHECKING:
    from turnout.routers.proxy.server import ClientConn

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
RETAIN_MAX = 64 * 1024
PENDING_MAX = 256 * 1024
MAX_ATTEMPTS = 3
BP_UPSTREAM = 1  # client reading paused: the backend is not taking the body fast enough
BP_PENDING = 2  # client reading paused: body buffered while a connection is being opened


def canned(status: int, reason: bytes) -> bytes:
    body = reason + b"\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        len(body),
        body,
    )


RESPONSE_502 = canned(502, b"Bad Gateway")
RESPONSE_503 = canned(503, b"Service Unavailable")


class Exchange:
    """A request from `client` on its way to a backend of `pool` and the answer back."""

    __slots__ = (
        "backend", "chunked", "client", "complete", "finished", "keep_alive", "method",
        "pending", "pending_size", "plan", "pool", "responded", "revision", "sent",
        "sent_size", "started", "task", "tried", "upstream",
    )

    def __init__(
        self,
        client: ClientConn,
        plan: Plan,
        pool: PoolPlan | None,
        *,
        method: bytes,
        head: bytes,
        chunked: bool,
        keep_alive: bool,
        started: float,
    ) -> None:
        self.client = client
        self.plan = plan
        self.pool = pool
        self.revision = pool.revision if pool is not None else ""
        self.method = method
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.started = started
        self.pending: list[bytes] = [head]
        self.pending_size = len(head)
        self.sent: list[bytes] | None = []
        self.sent_size = 0
        self.upstream: UpstreamConn | None = None
        self.backend: BackendRef | None = None
        self.tried: list[BackendRef] = []
        self.task: asyncio.Task[None] | None = None
        self.complete = False  # the whole request was received from the client
        self.finished = False  # the response is over (or failed)
        self.responded = False  # some response byte reached the client

    # --- starting and connecting
    def start(self) -> None:
        metrics = self.client.proxy.metrics
        if self.revision:
            metrics.request(self.revision)
        backend = self.pool.pick() if self.pool is not None else None
        if backend is None:
            self._local(RESPONSE_503, 503)
            return
        conn = self.client.proxy.conns.take(backend.address)
        if conn is not None:
            self.tried.append(backend)
            self._attach(conn, backend)
        else:
            self.task = asyncio.get_running_loop().create_task(self._connect(backend))

    async def _connect(self, backend: BackendRef | None) -> None:
        while backend is not None:
            self.tried.append(backend)
            try:
                conn = await self.client.proxy.conns.connect(backend)
            except (OSError, TimeoutError):
                backend = self._next_backend()
                continue
            self.task = None
            if self.finished:
                self.client.proxy.conns.release(conn)
            else:
                self._attach(conn, backend)
            return
        self.task = None
        self._fail()

    def _next_backend(self) -> BackendRef | None:
        if len(self.tried) >= MAX_ATTEMPTS or self.pool is None:
            return None
        candidates = self.plan.fallbacks(self.pool)
        return next((b for b in candidates if b not in self.tried), None)

    def _attach(self, conn: UpstreamConn, backend: BackendRef) -> None:
        self.upstream = conn
        self.backend = backend
        self.client.proxy.metrics.begin(backend.id)
        conn.attach(self, head=self.method == b"HEAD")
        if self.client.write_paused:
            conn.pause_reading()
        data = b"".join(self.pending)
        self.pending = []
        self.pending_size = 0
        self._write(data)
        self.client.resume(BP_PENDING)

    # --- the request body
    def body(self, chunk: bytes) -> None:
        if self.finished:
            return
        if self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._send(chunk)

    def request_complete(self) -> None:
        self.complete = True
        if self.chunked and not self.finished:
            self._send(b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_MAX:
                self.client.pause(BP_PENDING)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        assert self.upstream is not None
        self.upstream.write(data)
        if self.sent is not None:
            self.sent_size += len(data)
            if self.sent_size > RETAIN_MAX:
                self.sent = None
            else:
                self.sent.append(data)

    # --- the response (Sink for UpstreamConn)
    def response_data(self, data: bytes) -> None:
        self.responded = True
        self.client.write(data)

    def response_done(self, conn: UpstreamConn) -> None:
        self._detach()
        self.finished = True
        if conn.keep_alive and self.complete:
            self.client.proxy.conns.release(conn)
        else:
            conn.close()
        proxy = self.client.proxy
        proxy.metrics.response(self.revision, conn.status, perf_counter() - self.started)
        self.client.exchange_done(self, close=not conn.keep_alive)

    def upstream_lost(self, conn: UpstreamConn) -> None:
        self._detach()
        if self.finished:
            return
        idempotent = self.method in IDEMPOTENT
        if not conn.got_bytes and conn.reused and idempotent and self.sent is not None:
            self.pending, self.sent = self.sent, []
            self.pending_size, self.sent_size = self.sent_size, 0
            backend = self.backend
            self.task = asyncio.get_running_loop().create_task(self._connect(backend))
            return
        if self.responded:
            self.finished = True
            self.client.proxy.metrics.connection_error(self.revision)
            self.client.abort()
        else:
            self._fail()

    def pause_client(self) -> None:
        self.client.pause(BP_UPSTREAM)

    def resume_client(self) -> None:
        self.client.resume(BP_UPSTREAM)

    # --- endings
    def _detach(self) -> None:
        if self.upstream is not None and self.backend is not None:
            self.client.proxy.metrics.end(self.backend.id)
        self.upstream = None

    def _fail(self) -> None:
        self.client.proxy.metrics.connection_error(self.revision)
        self._local(RESPONSE_502, 0)

    def _local(self, response: bytes, status: int) -> None:
        self.finished = True
        self.responded = True
        self.client.write(response)
        if status and self.revision:
            proxy = self.client.proxy
            proxy.metrics.response(self.revision, status, perf_counter() - self.started)
        self.client.exchange_done(self, close=False)

    def abort(self) -> None:
        """The client went away: drop the backend connection (it cannot be reused)."""
        self.finished = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.upstream
        self._detach()
        if conn is not None:
            conn.close()
