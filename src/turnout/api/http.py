"""The HTTP/1.1 layer of `turnout server`: one asyncio protocol over httptools, no framework.

A connection parses requests, keeps only the headers the API reads (authorization,
conditional, encoding, If-Match), and answers them strictly in order, so pipelined and
keep-alive requests work. A handler returns one of three things: a `Response` (answered
at once, the hot path: no task, no await), an awaitable of a `Response` (run in a task
while later requests wait their turn), or a `Stream` (a server-sent event stream: the
connection then belongs to the stream until either side closes it).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import httptools

MAX_BODY = 1024 * 1024
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 304: "Not Modified",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Request:
    """One parsed request: what the routes need and nothing more."""

    __slots__ = ("accept_gzip", "authorization", "body", "if_match", "if_none_match",
                 "keep_alive", "method", "path", "query")

    def __init__(self, method: str, target: bytes, *, authorization: str | None = None,
                 if_none_match: bytes | None = None, if_match: str | None = None,
                 accept_gzip: bool = False, body: bytes = b"", keep_alive: bool = True) -> None:
        path, _, query = target.partition(b"?")
        self.method = method
        self.path = path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.authorization = authorization
        self.if_none_match = if_none_match
        self.if_match = if_match
        self.accept_gzip = accept_gzip
        self.body = body
        self.keep_alive = keep_alive


class Response:
    """A complete answer; `raw` (if given) is the whole pre-rendered keep-alive message."""

    __slots__ = ("body", "headers", "raw", "status")

    def __init__(self, status: int, body: bytes = b"", *, headers: bytes = b"",
                 raw: bytes | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers  # extra header lines, each ending in CRLF
        self.raw = raw

    def render(self, *, close: bool) -> bytes:
        if self.raw is not None:
            if close:  # the head comes first, so the first match is the header line
                return self.raw.replace(b"\r\nConnection: keep-alive\r\n",
                                        b"\r\nConnection: close\r\n", 1)
            return self.raw
        return render(self.status, self.body, self.headers, close=close)


def render(status: int, body: bytes, headers: bytes = b"", *, close: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response with a Content-Length."""
    reason = REASONS.get(status, "Unknown")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
    connection = b"Connection: close\r\n\r\n" if close else b"Connection: keep-alive\r\n\r\n"
    return head.encode() + headers + connection + body


def json_response(status: int, payload: object, headers: bytes = b"") -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, headers=b"Content-Type: application/json\r\n" + headers)


def problems(status: int, items: list[str]) -> Response:
    return json_response(status, {"problems": items})


class Stream:
    """A streaming (chunked) response; `attach` hands the open sink to its owner."""

    __slots__ = ("attach", "headers")

    def __init__(self, headers: bytes, attach: Callable[[StreamSink], None]) -> None:
        self.headers = headers
        self.attach = attach


class StreamSink(Protocol):
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...


Outcome = Response | Awaitable[Response] | Stream
Handler = Callable[[Request], Outcome]


class Connection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, handler: Handler, connections: set[Connection]) -> None:
        self._handler = handler
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._streaming = False
        self._failed = False
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._auth: str | None = None
        self._inm: bytes | None = None
        self._if_match: str | None = None
        self._gzip = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._streaming = False
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._streaming:
            return  # a stream's client has nothing more to say
        if self._failed:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Requests parsed before the error are still answered, then a 400 closes.
            self._failed = True
            self._pending.append(Request("", b"", keep_alive=False))
        self._pump()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._size = 0
        self._auth = self._inm = self._if_match = None
        self._gzip = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"authorization":
            self._auth = value.decode("latin-1")
        elif lower == b"if-none-match":
            self._inm = value
        elif lower == b"accept-encoding":
            self._gzip = b"gzip" in value.lower()
        elif lower == b"if-match":
            self._if_match = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_BODY:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        body = b"".join(self._body) if self._size <= MAX_BODY else b"\x00" * (MAX_BODY + 1)
        self._pending.append(Request(
            parser.get_method().decode("latin-1"), self._url, authorization=self._auth,
            if_none_match=self._inm, if_match=self._if_match, accept_gzip=self._gzip,
            body=body, keep_alive=parser.should_keep_alive()))

    # answering
    def _pump(self) -> None:
        transport = self._transport
        while (self._pending and self._worker is None and not self._streaming
               and transport is not None and not transport.is_closing()):
            request = self._pending.popleft()
            if not request.method:
                outcome: Outcome = problems(400, ["request: malformed HTTP"])
            elif len(request.body) > MAX_BODY:
                outcome = problems(413, [f"body: larger than {MAX_BODY} bytes"])
            else:
                outcome = self._handler(request)
            if isinstance(outcome, Response):
                self._answer(request, outcome)
            elif isinstance(outcome, Stream):
                self._start_stream(outcome)
            else:
                self._worker = asyncio.ensure_future(self._await(request, outcome))

    async def _await(self, request: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except Exception as exc:  # a handler bug must not kill the connection silently
            response = problems(500, [f"server: {type(exc).__name__}: {exc}"])
        self._worker = None
        self._answer(request, response)
        self._pump()

    def _answer(self, request: Request, response: Response) -> None:
        close = not request.keep_alive
        self._write(response.render(close=close), close=close)

    def _write(self, data: bytes, *, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            self._pending.clear()
            transport.close()

    def _start_stream(self, stream: Stream) -> None:
        self._streaming = True
        self._write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + stream.headers
                    + b"Connection: keep-alive\r\n\r\n", close=False)
        stream.attach(self)

    # StreamSink
    def send(self, data: bytes) -> None:
        if data and self._streaming:
            self._write(b"%x\r\n%b\r\n" % (len(data), data), close=False)

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing() or not self._streaming

    def close(self) -> None:
        """End a stream cleanly, or close an idle connection (shutdown)."""
        if self._streaming:
            self._write(b"0\r\n\r\n", close=True)
            self._streaming = False
        elif self._transport is not None and self._worker is None and not self._pending:
            self._transport.close()
