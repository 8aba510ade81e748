"""One proxied request/response exchange: backend choice, retries, streaming, counting.

Request bytes wait in `pending` until a backend connection is attached, then stream
through. While the request stays small (`RETAIN_MAX`) a copy is kept so that an idempotent
request that dies on a reused keep-alive connection before any response byte can be sent
again on a fresh connection; larger requests whose body has already streamed are not
retried (the client gets 502). A failed connect is retried on another backend of the same
pool first, then of any pool (a preview request only within the preview pool), up to
`MAX_ATTEMPTS` backends in all; when the last attempt timed out the answer is 504.

With `buffer_requests` a request body is read whole before any backend is called (413
beyond the limit), so slow uploads cost the router memory rather than an app's worker.
An instance's `101` to an upgrade hands both connections to a `Tunnel`. For an HTTP/1.0
client the response is re-framed by `Http10Response`.

`Answer` is an exchange the router answers itself before any backend is involved.
Every answer the router makes is counted (see `RevisionCounters.answered`) and logged.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING

from turnout.routers.proxy.balancer import BackendRef, Plan, PoolPlan
from turnout.routers.proxy.metrics import RevisionCounters
from turnout.routers.proxy.tunnel import Tunnel
from turnout.routers.proxy.upstream import UpstreamConn

if TYPE_CHECKING:
    from turnout.routers.proxy.flags import Cohort
    from turnout.routers.proxy.server import ClientConn
    from turnout.routers.proxy.state import Ticks

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
RETAIN_MAX = 64 * 1024
PENDING_MAX = 256 * 1024
MAX_ATTEMPTS = 3
BP_UPSTREAM = 1  # client reading paused: the backend is not taking the body fast enough
BP_PENDING = 2  # client reading paused: body buffered while a connection is being opened
REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
           413: b"Content Too Large", 431: b"Request Header Fields Too Large", 502: b"Bad Gateway",
           503: b"Service Unavailable", 504: b"Gateway Timeout"}


def canned(status: int, reason: bytes, *, close: bool = False) -> bytes:
    body = reason + b"\n"
    connection = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        reason,
        len(body),
        connection,
        body,
    )


RESPONSES = {status: canned(status, reason) for status, reason in REASONS.items()}
CLOSING = {status: canned(status, reason, close=True) for status, reason in REASONS.items()}
RESPONSE_502 = RESPONSES[502]
RESPONSE_503 = RESPONSES[503]


class Answer:
    """A request the router answers itself with `status`, then closes the connection."""

    __slots__ = ("chunked", "client", "complete", "counters", "deferred", "error", "keep_alive", "reason",
                 "responded", "status", "upstream")

    def __init__(
        self, client: ClientConn, status: int, counters: RevisionCounters, reason: str,
        *, error: BaseException | None = None,
    ) -> None:
        self.client = client
        self.status = status
        self.counters = counters
        self.reason = reason
        self.error = error
        self.chunked = False
        self.complete = False
        self.deferred = False
        self.keep_alive = False
        self.responded = False
        self.upstream: UpstreamConn | None = None

    def start(self) -> None:
        self.counters.requests += 1
        self.counters.answered(self.status)
        self.responded = True
        client = self.client
        client.proxy.note(self.status, client.peer, self.reason, self.error)
        client.write(CLOSING[self.status])
        client.exchange_done(self, True)

    def body(self, chunk: bytes) -> None:
        pass

    def request_complete(self) -> None:
        self.complete = True

    def tick(self, client: ClientConn, ticks: Ticks) -> None:
        pass

    def fail(self, error: BaseException | None = None) -> None:
        self.client.abort()

    def abort(self) -> None:
        pass


class Exchange:
    """A request from `client` on its way to a backend of `pool` and the answer back."""

    __slots__ = (
        "backend", "body_size", "buffer", "chunked", "client", "complete", "counters", "deferred", "early",
        "finished", "http10", "keep_alive", "method", "pending", "pending_size", "plan", "pool", "proxy",
        "responded", "sent", "sent_size", "started", "task", "timed_out", "tried", "upgrade", "upstream",
    )

    def __init__(
        self,
        client: ClientConn,
        plan: Plan,
        pool: PoolPlan | None,
        method: bytes,
        head: bytes,
        *,
        keep_alive: bool,
        cohort: Cohort | None = None,
    ) -> None:
        """Framing and start time come from the client's request just parsed.

        `cohort`: the request's flag results, when the proxy evaluates flags; it then counts
        into that combination's counters for its revision (added up per revision later).
        Requests without a pool count as unrouted.
        """
        self.client = client
        proxy = self.proxy = client.proxy
        self.plan = plan
        self.pool = pool
        if cohort is not None:
            revision = pool.revision if pool is not None else ""
            self.counters = cohort.by_revision.get(revision) or cohort.counters(revision)
        elif pool is not None:
            metrics = proxy.metrics
            self.counters = metrics.revisions.get(pool.revision) or metrics.revision(pool.revision)
        else:
            self.counters = proxy.metrics.unrouted
        self.method = method
        self.chunked = client.chunked
        self.keep_alive = keep_alive
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
        self.http10 = False  # the client speaks HTTP/1.0: the response is re-framed
        self.upgrade = False  # the client offers an upgrade that was forwarded
        self.early = b""  # bytes the client sent after an upgrade request
        self.deferred = False  # waiting for the whole body before connecting
        self.timed_out = False  # the last connect attempt timed out
        # With buffering: the body bytes allowed (-1: announced larger, refused), and seen so far.
        self.buffer: int | None = None
        self.body_size = 0
        if proxy.buffer_limit is not None and (self.chunked or client.length not in (None, b"0")):
            self.buffer = -1 if _declared(client.length) > proxy.buffer_limit else proxy.buffer_limit

    # --- starting and connecting
    def start(self) -> None:
        self.counters.requests += 1
        buffer = self.buffer
        if buffer is not None:
            if buffer < 0 or self.body_size > buffer:
                self._local(413, close=True)
                return
            if not self.complete:
                self.deferred = True  # request_complete starts it
                return
        self._begin()

    def _begin(self) -> None:
        backend = self.pool.pick() if self.pool is not None else None
        if backend is None:
            self._local(503)
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
                conn = await self.proxy.conns.connect(backend, within=self.proxy.connect_timeout)
            except TimeoutError:
                self.timed_out = True
                backend = self._next_backend(tried)
                continue
            except OSError:
                self.timed_out = False
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
        """The next backend to try: never outside the preview pool for a preview request."""
        if len(tried) >= MAX_ATTEMPTS or self.pool is None:
            return None
        pool = self.pool
        candidates = pool.backends if self.client.preview else self.plan.fallbacks(pool)
        return next((b for b in candidates if b not in tried), None)

    def _attach(self, conn: UpstreamConn, backend: BackendRef) -> None:
        self.upstream = conn
        self.backend = backend
        in_flight = self.proxy.metrics.in_flight
        in_flight[backend.id] = in_flight.get(backend.id, 0) + 1
        conn.attach(self, self.method == b"HEAD", self if self.http10 else None)
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
        if self.buffer is not None:
            self.body_size += len(chunk)
            if self.body_size > self.buffer and self.upstream is None:
                if self.deferred or self.client.current is self:
                    self._local(413, close=True)
                return  # a queued exchange answers 413 when it starts
        if self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._send(chunk)

    def request_complete(self) -> None:
        self.complete = True
        if self.chunked and not self.finished:
            self._send(b"0\r\n\r\n")
        if self.deferred and not self.finished:
            self.deferred = False
            self._begin()

    def _send(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_MAX and self.buffer is None:
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
            self._cut()
        else:
            self._fail()

    def upgraded(self, data: bytes, conn: UpstreamConn) -> None:
        """The instance answered `101`: `data` holds that answer and what follows it."""
        if not self.upgrade:  # an upgrade nobody asked for
            self._detach()
            conn.close()
            self._fail()
            return
        self.finished = self.responded = True
        self.upstream = None  # the tunnel now holds the connection and its in-flight count
        self.counters.response(101, perf_counter() - self.started)
        client = self.client
        client.write(data)
        assert self.backend is not None and client.transport is not None and conn.transport is not None
        Tunnel(self.proxy, client.transport, conn.transport, self.backend.id).start(self.early)
        conn.sink = None
        client.tunnelled()

    def pause_client(self) -> None:
        self.client.pause(BP_UPSTREAM)

    def resume_client(self) -> None:
        self.client.resume(BP_UPSTREAM)

    # --- deadlines (called by the sweep)
    def tick(self, client: ClientConn, ticks: Ticks) -> None:
        if not self.complete:  # the body still comes: the client must keep sending it
            if client.paused:
                client.idle = 0
            elif client.idle > ticks.body:
                self._too_slow(408, "request body not received in time")
            return
        client.idle = 0
        conn = self.upstream
        if conn is None:
            return
        if client.write_paused:
            conn.quiet = 0
        else:
            conn.quiet += 1
            if conn.quiet > ticks.response:
                self._too_slow(504, "the instance did not answer in time")

    def _too_slow(self, status: int, what: str) -> None:
        conn = self.upstream
        self._detach()
        if conn is not None:
            conn.close()
        client = self.client
        client.proxy.note(status, client.peer, what)
        if self.responded:
            self._cut()
        else:
            self._local(status, close=True)

    # --- endings
    def _detach(self) -> None:
        if self.upstream is not None and self.backend is not None:
            in_flight = self.proxy.metrics.in_flight
            backend_id = self.backend.id
            in_flight[backend_id] = in_flight.get(backend_id, 1) - 1
        self.upstream = None

    def _fail(self) -> None:
        """No backend could be reached or heard from: 502, or 504 if the last one timed out."""
        status = 504 if self.timed_out else 502
        client = self.client
        client.proxy.note(status, client.peer, "no instance could be reached")
        self._local(status)

    def _cut(self) -> None:
        """The response had begun: the client connection is cut, counted as an error."""
        self.finished = True
        self.counters.errors += 1
        self.client.abort()

    def _local(self, status: int, *, close: bool = False) -> None:
        self.finished = True
        self.responded = True
        self.client.write(CLOSING[status] if close else RESPONSES[status])
        self.counters.answered(status)
        self.client.exchange_done(self, close)

    def fail(self, error: BaseException | None = None) -> None:
        """A bug of the router hit this exchange: 502 if nothing was answered yet, else a cut."""
        conn = self.upstream
        self._detach()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if conn is not None:
            conn.close()
        client = self.client
        client.proxy.note(502, client.peer, "router error", error)
        if self.responded:
            self._cut()
        else:
            self._local(502, close=True)

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


def _declared(length: bytes | None) -> int:
    """The body size a client announced (0 when chunked or unknown)."""
    try:
        return int(length) if length is not None else 0
    except ValueError:
        return 0
