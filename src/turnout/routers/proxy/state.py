"""Worker-wide state of the proxy, and the sweep that keeps every deadline.

`Proxy` holds what all connections share: the compiled plan in effect (swapped as one
reference), the flag settings, the limits and timeouts of the table, counters, the idle
backend pool, and the live clients and tunnels.

Deadlines cost nothing per request: a periodic sweep (five per shortest timeout) walks the
connections. A client's `idle` counts sweeps without a byte from it; an instance
connection's `quiet` counts sweeps without a byte from the instance while a response is
due. The header deadline is measured from the head's first byte (`started`), so a client
trickling a byte at a time cannot extend it. What happens when a deadline passes is the
connection's business (`ClientConn.head_timeout`, `Exchange.tick`, `Tunnel.close`).

Answers the router makes itself are logged through `note`, at most `LOG_BURST` lines a
second, so hostile traffic cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from turnout.flags import FlagState
from turnout.routers.proxy.balancer import Outliers, Plan
from turnout.routers.proxy.flags import FlagPlan, empty_settings
from turnout.routers.proxy.metrics import Metrics
from turnout.routers.proxy.upstream import ConnPool
from turnout.routers.table import RoutingTable, Timeouts

if TYPE_CHECKING:
    from turnout.routers.proxy.server import ClientConn
    from turnout.routers.proxy.tunnel import Tunnel

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
        b"http2-settings",
        b"x-forwarded-proto",  # re-emitted by the client connection, trusted or not
        b"x-forwarded-host",
    }
)
ALWAYS_WANTED = frozenset({b"host"})  # read from every request head
SWEEPS_PER_TIMEOUT = 5
MIN_SWEEP = 0.05
LOG_BURST = 20

log = logging.getLogger("turnout.proxy")


@dataclass(frozen=True, slots=True)
class Ticks:
    """The timeouts of a table in sweeps (`header` stays in seconds)."""

    period: float
    header: float
    idle: int
    body: int
    response: int
    send: int
    tunnel: int

    @classmethod
    def of(cls, t: Timeouts) -> Ticks:
        shortest = min(t.header, t.idle, t.body, t.response, t.send, t.tunnel)
        period = max(MIN_SWEEP, shortest / SWEEPS_PER_TIMEOUT)

        def sweeps(seconds: float) -> int:
            return max(1, math.ceil(seconds / period))

        return cls(period, t.header, sweeps(t.idle), sweeps(t.body), sweeps(t.response), sweeps(t.send),
                   sweeps(t.tunnel))


class Proxy:
    """Worker-wide state shared by every connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: RoutingTable,
        flags: tuple[dict[str, Any], FlagState] | None = None,
    ) -> None:
        """`flags`: the flag settings and their compiled state (default: none evaluated)."""
        self.loop = loop
        self.metrics = Metrics()
        self.conns = ConnPool()
        self.outliers = Outliers()  # backends whose connect failed a moment ago
        self.clients: set[ClientConn] = set()
        self.tunnels: set[Tunnel] = set()
        self.draining = False
        self.all_closed = asyncio.Event()  # set once draining and no client is left
        self.addresses: dict[str, str] = {}  # listener name -> bound host:port
        self.buffered = 0  # request body bytes held by buffering exchanges (see `proxy.special`)
        self._hosts: dict[bool, bytes] = {}
        self._log_second = 0.0
        self._logged = 0
        self._suppressed = 0
        if flags is None:
            settings = empty_settings()
            flags = settings, FlagState.from_json(settings["state"])
        self.flags: FlagPlan
        self.flagging: FlagPlan | None  # `flags` while it evaluates any flag, else None
        self._drop: frozenset[bytes] = HOP_BY_HOP
        self.ticks = Ticks.of(table.timeouts)
        self.plan = Plan.compile(table, self.outliers.until)
        self.set_flags(*flags)
        self.swap(table)
        self._sweeping = loop.call_later(self.ticks.period, self.sweep)

    # --- the table and the flags
    def swap(self, table: RoutingTable) -> None:
        """Put `table` in effect: compile first, then replace one reference."""
        plan = Plan.compile(table, self.outliers.until)
        plan.wanted = plan.wanted | ALWAYS_WANTED
        plan.drop = self._drop
        plan.buffering = table.buffer_requests is not None
        limits = table.limits
        self.max_head = limits.max_header_size
        self.max_header_items = 4 * limits.max_headers  # name, ": ", value, CRLF per header
        self.max_connections = limits.max_connections
        self.buffer_limit = table.buffer_requests
        self.max_buffered = limits.max_buffered
        self.connect_timeout = table.timeouts.connect
        ticks = Ticks.of(table.timeouts)
        if ticks.period != self.ticks.period and hasattr(self, "_sweeping"):
            self._sweeping.cancel()
            self._sweeping = self.loop.call_later(ticks.period, self.sweep)
        self.ticks = ticks
        self.plan = plan
        self.conns.retain(plan.addresses)
        self.outliers.retain(plan.backends)

    def set_flags(self, settings: dict[str, Any], state: FlagState) -> None:
        """Put flag settings in effect (`state` is `settings["state"]` compiled)."""
        flags = FlagPlan(settings, state, self.metrics.combo)
        self._drop = HOP_BY_HOP | {flags.lheader}
        self.flags = flags
        self.flagging = flags if flags.names else None
        self.plan.drop = self._drop

    # --- connections
    def connections(self) -> int:
        return len(self.clients) + len(self.tunnels)

    def host_of(self, preview: bool) -> bytes:
        """The Host to send for a request that named none: the listener's own address."""
        host = self._hosts.get(preview)
        if host is None:
            address = self.addresses.get("preview_listen" if preview else "listen", "localhost")
            host = self._hosts[preview] = address.encode()
        return host

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

    def sweep(self) -> None:
        """Close or answer every connection past one of its deadlines (see the module doc).

        The next sweep is due first, and a failure on one connection cuts that connection
        only: an error here must never switch the deadlines off.
        """
        now = perf_counter()
        ticks = self.ticks
        self._sweeping = self.loop.call_later(ticks.period, self.sweep)
        for client in list(self.clients):
            try:
                client.idle += 1
                current = client.current
                if client.started and now - client.started > ticks.header:
                    client.head_timeout()
                elif current is None:
                    if client.idle > ticks.idle:
                        client.close()
                else:
                    current.tick(client, ticks)
            except Exception as exc:
                self.note(502, client.peer, "router error in a deadline", exc)
                client.abort()
        for tunnel in list(self.tunnels):
            tunnel.idle += 1
            if tunnel.idle > ticks.tunnel:
                tunnel.close()

    # --- the log
    def note(self, status: int, peer: bytes, what: str, error: BaseException | None = None) -> None:
        """Log an answer the router made itself (rate-limited; errors with their traceback)."""
        now = monotonic()
        if now - self._log_second >= 1.0:
            if self._suppressed:
                log.warning("%d more answers of the router not logged in the last second", self._suppressed)
            self._log_second, self._logged, self._suppressed = now, 0, 0
        if self._logged >= LOG_BURST:
            self._suppressed += 1
            return
        self._logged += 1
        exc_info = (type(error), error, error.__traceback__) if error is not None else None
        log.warning("%d to %s: %s", status, peer.decode("latin-1"), what, exc_info=exc_info)
