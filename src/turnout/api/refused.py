"""Connections over `max_connections`: answered 503 at once, then closed within `LINGER_S`.

They never reach a parser: the answer is written as soon as the connection is made, FIN
follows, and whatever the client still sends is discarded until it leaves or `LINGER_S`
passes, so it reads the 503 rather than a reset. At most `MAX_REFUSING` linger at once;
beyond that a refused connection is closed right after its answer.
"""

from __future__ import annotations

import asyncio
from typing import cast

from turnout.api.connection import LINGER_S
from turnout.api.http import render

MAX_REFUSING = 256  # refused connections lingering at once; more are closed at once
BUSY = render(503, b'{"problems":["server: too many connections, retry later"]}',
              b"Content-Type: application/json\r\nRetry-After: 1\r\n", close=True)


class Refused(asyncio.Protocol):
    """A connection over `max_connections`: 503 at once, FIN, closed within `LINGER_S`."""

    def __init__(self, refusing: set[Refused]) -> None:
        self._refusing = refusing
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        tcp.write(BUSY)
        if len(self._refusing) >= MAX_REFUSING or not tcp.can_write_eof():
            tcp.close()
            return
        tcp.write_eof()
        self._refusing.add(self)
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, tcp.abort)

    def data_received(self, data: bytes) -> None:
        pass  # discarded: the request will not be served

    def eof_received(self) -> bool:
        return False  # closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._refusing.discard(self)
        if self._timer is not None:
            self._timer.cancel()
