"""The HTTP/1.1 messages of `turnout server`: requests, responses, streams, and their bytes.

A handler returns one of three things: a `Response` (answered at once, the hot path: no
task, no await), an awaitable of a `Response` (run in a task while later requests wait
their turn), or a `Stream` (a server-sent event stream: the connection then belongs to
the stream until either side closes it). The connection that parses requests and writes
these answers, with its limits, is `turnout.api.connection`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Protocol

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 304: "Not Modified",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           413: "Content Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Request:
    """One parsed request: what the routes need and nothing more."""

    __slots__ = ("accept_gzip", "authorization", "body", "client", "if_match", "if_none_match",
                 "keep_alive", "method", "path", "query")

    def __init__(self, method: str, target: bytes, *, authorization: str | None = None,
                 if_none_match: bytes | None = None, if_match: str | None = None,
                 accept_gzip: bool = False, body: bytes = b"", keep_alive: bool = True,
                 client: str = "") -> None:
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
        self.client = client  # the peer's address, for the limit on failed authentications


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


Outcome = Response | Awaitable["Response | Stream"] | Stream
Handler = Callable[[Request], Outcome]
