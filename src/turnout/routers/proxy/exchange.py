"""One proxied request/response exchange: backend choice, retries, streaming, counting.

Request bytes wait in `pending` until a backend connection is attached, then stream
through. While the request stays small (`RETAIN_MAX`) a copy is kept so that an idempotent
request that dies on a reused keep-alive connection before any response byte can be sent
again on a fresh connection; larger requests whose body has already streamed are not
retried (the client gets 502). A failed connect is retried on another backend of the same
pool first, then of any pool (a preview request only within the preview pool), up to
`MAX_ATTEMPTS` backends in all; when the last attempt timed out the answer is 504. Counting
follows the attempts, so a retry never hides a failure: a request retried on another
revision counts the failed attempt under the revision it leaves and its answer under the one
that gives it (`_count_under`).

This class is the path every request takes, kept as short as it can be; what only some
requests need (HTTP/1.0 clients, upgrades, buffered bodies) is in `SpecialExchange`, whose
class attributes here are the defaults an ordinary exchange reads.
"""

from __future__ import annotations

import asyncio
import errno
from bisect import bisect_left
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING

from turnout.routers.base import LATENCY_BOUNDS
from turnout.routers.proxy.answers import CLOSING, RESPONSES
from turnout.routers.proxy.balancer import BackendRef, PoolPlan
from turnout.routers.proxy.upstream import UpstreamConn

if TYPE_CHECKING:
    from turnout.routers.proxy.flags import Cohort
    from turnout.routers.proxy.server import ClientConn
    from turnout.routers.proxy.state import Ticks

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
RETAIN_MAX = 64 * 1024
PENDING_MAX = 256 * 1024
MAX_ATTEMPTS = 3
_HOST_LOST = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


def _host_lost(exc: BaseException) -> bool:
    """A connect error that says the host, not only the port, is gone."""
    return isinstance(exc, OSError) and exc.errno in _HOST_LOST
BP_UPSTREAM = 1  # client reading paused: the backend is not taking the body fast enough
BP_PENDING = 2  # client reading paused: body buffered while a connection is being opened


class Exchange:
    """A request from `client` on its way to a backend of `pool` and the answer back."""

    __slots__ = (
        "backend", "chunked", "client", "complete", "counters", "deferred", "finished", "first", "keep_alive",
        "method", "pending", "pending_size", "pool", "proxy", "responded", "sent", "sent_size",
        "started", "task", "tried", "upstream",
    )

    def __init__(  # noqa: PLR0917  # once per request: positional arguments cost less
        self,
        client: ClientConn,
        pool: PoolPlan | None,
        method: bytes,
        head: bytes,
        keep_alive: bool,
        cohort: Cohort | None,
    ) -> None:
        """Framing and start time come from the client's request just parsed.

        `cohort`: the request's flag results, when the proxy evaluates flags; it then counts
        into that combination's counters for its revision (added up per revision later).
        Requests without a pool count as unrouted.
        """
        self.client = client
        proxy = self.proxy = client.proxy
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
        self.deferred = False  # the body is awaited before any backend is called (SpecialExchange)
        self.first = 0.0  # when the first bytes of a response that came in several reads went out

    # --- starting and connecting
    def start(self) -> None:
        """Count the request and send it on."""
        self.counters.requests += 1
        backend = self.pool.pick() if self.pool is not None else None
        if backend is None:
            self._local(503, "no instance to send it to")
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
        timed_out = False  # the last attempt
        while backend is not None:
            if backend not in tried:  # a retry on a fresh connection is not another backend
                tried.append(backend)
            proxy = self.proxy
            try:
                conn = await proxy.conns.connect(backend, within=proxy.connect_timeout)
            except (TimeoutError, OSError) as exc:
                timed_out = isinstance(exc, TimeoutError)
                # Passed over for a while (`Outliers`): the whole host if it did not answer.
                proxy.outliers.failed(backend, whole_host=timed_out or _host_lost(exc))
                proxy.conns.drop(backend.address)
            else:
                if proxy.outliers.until:
                    proxy.outliers.succeeded(backend)
                self.task = None
                if self.finished:
                    self.proxy.conns.release(conn)
                else:
                    self._attach(conn, backend)
                return
            if self.finished:  # answered meanwhile (a deadline, the client gone)
                return
            failed, backend = backend, self._next_backend(tried)
            if backend is not None and backend.revision != failed.revision:
                self._count_under(backend.revision)
        self.task = None
        self._fail(timed_out=timed_out)

    def _count_under(self, revision: str) -> None:
        """The request leaves the revision whose backend refused it for `revision`: the one
        it leaves keeps the failed attempt (a request and a connection error, in the same
        counters object: the revision's, or its flag combination's), and the request counts
        anew under `revision`, which gets its answer (status, latency) or its failure.

        A retry within the revision does not come here: the request counts once, and the
        failed connect is no error, since the revision still answered it; counting one would
        report a failure no client saw. The backend that failed is passed over meanwhile
        (`Outliers`). Only the failure path calls this: nothing on a first connect that works.
        """
        counters = self.counters
        counters.errors += 1
        counters = self.counters = self.proxy.metrics.moved(counters, revision)
        counters.requests += 1

    def _next_backend(self, tried: list[BackendRef]) -> BackendRef | None:
        """The next backend to try: never outside the preview pool for a preview request."""
        if len(tried) >= MAX_ATTEMPTS or self.pool is None:
            return None
        pool = self.pool
        # Outside the preview, the table in effect now: one that changed while the connect
        # waited has dropped the instances it stopped.
        candidates: Sequence[BackendRef] = (
            pool.backends if self.client.preview else self.proxy.plan.fallbacks(pool))
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
        if not self.first:  # a streamed answer's latency is its first byte's, not its last's
            self.first = perf_counter()
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
        counters = self.counters  # counters.response, inlined
        if conn.status >= 500:
            counters.responses_5xx += 1
        counters.latency[bisect_left(LATENCY_BOUNDS, (self.first or perf_counter()) - self.started)] += 1
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
        """The instance answered `101` to a request that offered no upgrade: a broken answer."""
        self._detach()
        conn.close()
        self._fail()

    def pause_client(self) -> None:
        self.client.pause(BP_UPSTREAM)

    def resume_client(self) -> None:
        self.client.resume(BP_UPSTREAM)

    # --- deadlines (called by the sweep)
    def tick(self, client: ClientConn, ticks: Ticks) -> None:
        """One sweep: who is holding this exchange up, and for how long?

        While the body comes, a client silent for `body` gets 408 (not if we paused it). An
        instance that neither reads what we send nor answers for `response` gets its client
        504 (or a cut, once the answer has begun); `quiet` counts the sweeps since it last did
        either. A client that leaves the answer unread for `send` is cut.
        """
        conn = self.upstream
        if not self.complete and not client.paused:
            if client.idle > ticks.body:
                self._too_slow(408, "request body not received in time")
            return
        client.idle = 0
        if client.write_paused:
            client.stalled += 1
            if client.stalled > ticks.send:
                self._too_slow(0, "the client did not read its answer in time")
            return
        client.stalled = 0
        if conn is not None:
            conn.quiet += 1
            if conn.quiet > ticks.response:
                self._too_slow(504, "the instance did not answer in time")

    def _too_slow(self, status: int, what: str) -> None:
        """Give up on a deadline: answer `status` (0: the client is at fault, just cut) or cut."""
        conn = self.upstream
        self._detach()
        if conn is not None:
            conn.close()
        if not status:  # the client's fault: counted apart, not as the instance's error
            client = self.client
            client.proxy.note(499, client.peer, what)
            self.counters.answered(499)
            self._cut(counted=False)
        elif self.responded:
            client = self.client
            client.proxy.note(status, client.peer, what)
            self._cut()
        else:
            self._local(status, what, close=True)

    # --- endings
    def _detach(self) -> None:
        if self.upstream is not None and self.backend is not None:
            in_flight = self.proxy.metrics.in_flight
            backend_id = self.backend.id
            in_flight[backend_id] = in_flight.get(backend_id, 1) - 1
        self.upstream = None

    def _fail(self, *, timed_out: bool = False) -> None:
        """No backend could be reached or heard from: 502, or 504 if the last one timed out."""
        self._local(504 if timed_out else 502, "no instance could be reached")

    def _cut(self, *, counted: bool = True) -> None:
        """The client connection is cut: an error of the instance's if `counted`."""
        self.finished = True
        if counted:
            self.counters.errors += 1
        self.client.abort()

    def _local(
        self, status: int, what: str, *, close: bool = False, error: BaseException | None = None
    ) -> None:
        """Answer `status` ourselves (counted and logged), instead of an instance."""
        self.finished = True
        self.responded = True
        if self.task is not None:  # a connect still under way is not wanted any more
            self.task.cancel()
            self.task = None
        client = self.client
        client.proxy.note(status, client.peer, what, error)
        client.write(CLOSING[status] if close else RESPONSES[status])
        self.counters.answered(status)
        client.exchange_done(self, close)

    def refuse(self, status: int, what: str) -> None:
        """The client broke its own request mid-body: `status` (or a cut), not the instance's error."""
        conn = self.upstream
        self._detach()
        if conn is not None:
            conn.close()
        if self.responded:
            client = self.client
            client.proxy.note(status, client.peer, what)
            self._cut(counted=False)
        else:
            self._local(status, what, close=True)

    def fail(self, error: BaseException | None = None) -> None:
        """A bug of the router hit this exchange: 502 if nothing was answered yet, else a cut."""
        conn = self.upstream
        self._detach()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if conn is not None:
            conn.close()
        if self.responded:
            client = self.client
            client.proxy.note(502, client.peer, "router error", error)
            self._cut()
        else:
            self._local(502, "router error", close=True, error=error)

    def abort(self) -> None:
        """The client went away: drop the backend connection (it cannot be reused).

        Gone before any answer, it counts as a 499 with the time it waited, so that an
        instance too slow for its clients shows in the latency however they gave up.
        """
        if not self.finished and not self.responded and not self.deferred:
            self.counters.answered(499)
            self.counters.latency[bisect_left(LATENCY_BOUNDS, perf_counter() - self.started)] += 1
        self.finished = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.upstream
        self._detach()
        if conn is not None:
            conn.close()

