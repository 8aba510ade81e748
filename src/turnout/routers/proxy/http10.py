"""Responses re-framed for HTTP/1.0 clients.

Instances get every request as HTTP/1.1, so they may answer a 1.0 client's request with
`Transfer-Encoding: chunked`, which 1.0 does not know, and they never say `Connection:
keep-alive`, which a 1.0 client needs to hear to keep its connection. `Http10Response`
takes the parser's callbacks for such a response and writes it anew: interim `1xx` answers
are dropped (RFC 9110 forbids them towards 1.0), hop-by-hop headers go, a body of known
length keeps its `Content-Length` and the connection is kept if the client asked for it,
and any other body is decoded and sent delimited by closing the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from turnout.routers.proxy.upstream import UpstreamConn

DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                     b"transfer-encoding", b"upgrade", b"content-length"})
NO_BODY = frozenset({204, 304})


class Http10Sink(Protocol):
    """The exchange of an HTTP/1.0 client, as the re-framing needs it."""

    keep_alive: bool

    def rewritten(self, data: bytes) -> None: ...


class Http10Response:
    """Parser callbacks writing one instance response to an HTTP/1.0 client."""

    __slots__ = ("chunked", "conn", "headers", "length", "reason", "sink")

    def __init__(self, conn: UpstreamConn, sink: Http10Sink) -> None:
        self.conn = conn
        self.sink = sink
        self._reset()

    def _reset(self) -> None:
        self.headers: list[bytes] = []
        self.reason = b""
        self.length: bytes | None = None
        self.chunked = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in DROPPED:
            if lname == b"content-length":
                self.length = value
            elif lname == b"transfer-encoding":
                self.chunked = True
            return
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        conn = self.conn
        status = conn.parser.get_status_code()
        if status < 200:  # interim: not for a 1.0 client; the final answer follows
            self._reset()
            return
        conn.status = status
        conn.keep_alive = bool(conn.parser.should_keep_alive())
        bodyless = conn.head or status in NO_BODY
        sized = self.length is not None and not self.chunked
        keep = self.sink.keep_alive and (bodyless or sized)
        lines = b"".join(self.headers)
        if sized:
            lines += b"Content-Length: %s\r\n" % self.length
        lines += b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n"
        self.sink.keep_alive = keep
        self.sink.rewritten(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, self.reason, lines))
        if conn.head:  # the parser would wait for the announced body: the answer ends here
            conn.done = True
            conn.plain()

    def on_body(self, body: bytes) -> None:
        self.sink.rewritten(body)

    def on_message_complete(self) -> None:
        if self.conn.status:
            self.conn.done = True
