"""Upgraded connections (WebSocket and the like): bytes copied both ways after a `101`.

Once an instance switched protocols, the router no longer reads HTTP on either connection:
both transports get a `_End` protocol that writes what it reads to the other side, pausing
reading when the other side's write buffer is full. The tunnel keeps its backend's
in-flight count up until it closes, so a drain waits for it (up to the drain timeout, after
which the instance is stopped and closes its sockets itself); the sweep closes a tunnel
silent for longer than `timeouts.tunnel`. Either side closing closes the other once what
was already read has been written.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnout.routers.proxy.state import Proxy


class Tunnel:
    __slots__ = ("backend_id", "client", "closed", "idle", "proxy", "upstream")

    def __init__(
        self, proxy: Proxy, client: asyncio.Transport, upstream: asyncio.Transport, backend_id: str
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.backend_id = backend_id
        self.idle = 0  # sweeps without a byte either way
        self.closed = False

    def start(self, early: bytes) -> None:
        """Take both transports over; `early` is what the client sent before the `101`."""
        self.proxy.tunnels.add(self)
        self.client.set_protocol(_End(self, self.upstream))
        self.upstream.set_protocol(_End(self, self.client))
        if early:
            self.upstream.write(early)
        for transport in (self.client, self.upstream):
            if not transport.is_closing():
                transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.tunnels.discard(self)
        self.proxy.metrics.end(self.backend_id)
        self.client.close()
        self.upstream.close()
        self.proxy.forget(None)


class _End(asyncio.Protocol):
    """One side of a tunnel: what it reads goes to `peer`."""

    __slots__ = ("peer", "tunnel")

    def __init__(self, tunnel: Tunnel, peer: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.peer = peer

    def data_received(self, data: bytes) -> None:
        self.tunnel.idle = 0
        if not self.peer.is_closing():
            self.peer.write(data)

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost closes the other

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()
