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
from turnout.routers.proxy.metrics import RevisionCounters
from turnout.routers.proxy.upstream import UpstreamConn

if TYPE_CHECKING:
    from turnout.routers.proxy.flags import Cohort
    from turnout.routers.proxy.server import ClientConn, Proxy

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
        "backend", "chunked", "client", "complete", "counters", "finished", "keep_alive",
        "method", "pending", "pending_size", "plan", "pool", "proxy", "responded", "sent",
        "sent_size", "started", "task", "tried", "upstream",
    )

    def __init__(
        self,
        client: ClientConn,
        plan: Plan,
        pool: PoolPlan | None,
        method: bytes,
        head: bytes,
        *,
        cohort: Cohort | None = None,
    ) -> None:
        """Framing, keep-alive and start time come from the client's request just parsed.

        `cohort`: the request's flag results, when the proxy evaluates flags; it then counts
        into that combination's counters for its revision (added up per revision later).
        """
        self.client = client
        self.proxy: Proxy = client.proxy
        self.plan = plan
        self.pool = pool
        self.counters: RevisionCounters | None = None
        if cohort is not None:
            revision = pool.revision if pool is not None else ""
            self.counters = cohort.by_revision.get(revision) or cohort.counters(revision)
        elif pool is not None:
            metrics = self.proxy.metrics
            self.counters = metrics.revisions.get(pool.revision) or metrics.revision(pool.revision)
        self.method = method
        self.chunked = client.chunked
        self.keep_alive = bool(client.parser.should_keep_alive())
        self.started = client.started
        self.pending: list[bytes] = [head]
        self.pending_size = len(head)
        self.sent: list[bytes] | None = []
        self.sent_size = 0
        self.upstream: UpstreamConn | None = None
        self.backend: BackendRef | None = None
        self.tried: list[BackendRef] | None = None
        self.task: asyncio.Task[None] | None = None
        self.complete = False  # the whole request was received from the client
        self.finished = False  # the response is over (or failed)
        self.responded = False  # some response byte reached the client

    # --- starting and connecting
    def start(self) -> None:
        if self.counters is not None:
            self.counters.requests += 1
        backend = self.pool.pick() if self.pool is not None else None
        if backend is None:
            self._local(RESPONSE_503, 503)
            return
        conn = self.proxy.conns.take(backend.address)
        if conn is not None:
            self.tried = [backend]
            self._attach(conn, backend)
        else:
            self.tried = []
            self.task = asyncio.get_running_loop().create_task(self._connect(backend))

    async def _connect(self, backend: BackendRef | None) -> None:
        tried = self.tried
        assert tried is not None
        while backend is not None:
            tried.append(backend)
            try:
                conn = await self.proxy.conns.connect(backend)
            except (OSError, TimeoutError):
                backend = self._next_backend(tried)
                continue
            self.task = None
            if self.finished:
                self.proxy.conns.release(conn)
            else:
                self._attach(conn, backend)
            return
        self.task = None
        self._fail()

    def _next_backend(self, tried: list[BackendRef]) -> BackendRef | None:
        if len(tried) >= MAX_ATTEMPTS or self.pool is None:
            return None
        candidates = self.plan.fallbacks(self.pool)
        return next((b for b in candidates if b not in tried), None)

    def _attach(self, conn: UpstreamConn, backend: BackendRef) -> None:
        self.upstream = conn
        self.backend = backend
        in_flight = self.proxy.metrics.in_flight
        in_flight[backend.id] = in_flight.get(backend.id, 0) + 1
        conn.attach(self, self.method == b"HEAD")
        client = self.client
        if client.write_paused:
            conn.pause_reading()
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.pending = []
        self.pending_size = 0
        self._write(data)
        if client.paused:
            client.resume(BP_PENDING)

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

    def response_end(self, data: bytes, conn: UpstreamConn) -> None:
        """The last bytes of the response (the common case: the whole response at once)."""
        self.responded = True
        client = self.client
        if not client.closed:
            client.transport.write(data)  # type: ignore[union-attr]  # set once connected
        self.response_done(conn)

    def response_done(self, conn: UpstreamConn) -> None:
        if self.backend is not None and self.upstream is not None:  # _detach, inlined
            in_flight = self.proxy.metrics.in_flight
            in_flight[self.backend.id] = in_flight.get(self.backend.id, 1) - 1
        self.upstream = None
        self.finished = True
        keep_alive = conn.keep_alive
        if keep_alive and self.complete:
            self.proxy.conns.release(conn)
        else:
            conn.close()
        if self.counters is not None:
            self.counters.response(conn.status, perf_counter() - self.started)
        self.client.exchange_done(self, not keep_alive)

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
            if self.counters is not None:
                self.counters.errors += 1
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
            in_flight = self.proxy.metrics.in_flight
            backend_id = self.backend.id
            in_flight[backend_id] = in_flight.get(backend_id, 1) - 1
        self.upstream = None

    def _fail(self) -> None:
        """Connection error: counted once as such (not also as a 5xx) and answered 502."""
        if self.counters is not None:
            self.counters.errors += 1
        self._local(RESPONSE_502, 0)

    def _local(self, response: bytes, status: int) -> None:
        self.finished = True
        self.responded = True
        self.client.write(response)
        if status and self.counters is not None:
            self.counters.response(status, perf_counter() - self.started)
        self.client.exchange_done(self, False)

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
