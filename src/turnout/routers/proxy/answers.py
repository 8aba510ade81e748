"""Answers the router makes itself: canned responses, and `Answer` for a request that never
reaches an instance (over a limit, malformed, refused, or hit by a router error).

An `Answer` stands where an exchange would in a client's queue, so a refusal of a pipelined
request goes out after the answers due before it. Each one is counted (see
`RevisionCounters.answered`) and logged through `Proxy.note`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from turnout.routers.proxy.metrics import RevisionCounters

if TYPE_CHECKING:
    from turnout.routers.proxy.server import ClientConn
    from turnout.routers.proxy.state import Ticks
    from turnout.routers.proxy.upstream import UpstreamConn

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

    def refuse(self, status: int, what: str) -> None:
        self.client.abort()

    def abort(self) -> None:
        pass
