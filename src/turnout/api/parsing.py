"""Parsing one connection's requests with httptools, within the limits on heads and bodies.

`RequestParsing` is the half of `turnout.api.connection.Connection` that turns bytes into
`Request`s: the httptools callbacks (which keep only the headers the API reads:
authorization, conditional, encoding, If-Match), the feeding of the parser a slice at a
time, and the 400, 413 and 431 answers parsing can end in. It is a base class rather than
an object of its own because httptools calls the callbacks on one object for every
request: one class keeps the hot path free of a hop between two.

- **Heads.** httptools keeps a header line whole until it ends, however long, before it
  reports it. So the parser is fed in slices no longer than what the current head may
  still hold, and a head that has used up `max_head` bytes without ending is answered
  431 (so is one with more than `max_headers` lines, counted by the callbacks). A slice
  ends where the head in it ends (`\r\n\r\n`) or its `Content-Length` body does, so
  each pipelined request's head starts a slice of its own and is measured exactly.
  Only after a chunked body, or a head end split between two reads, may the next head
  begin inside a slice; it is then measured from the next slice, so it may pass the
  limit by at most that slice (`max_head`, at least 4 KiB). Sizes are counted per slice
  rather than per header line in the callbacks, which run for every request.
- **Bodies.** A `Content-Length` over `max_body`, or a chunked body growing past it, is
  answered 413 without reading the rest.

Parsing stops at the first error (`_fail`): what was parsed before it is answered first,
then the error, then the connection closes.
"""

from __future__ import annotations

from collections import deque

import httptools

from turnout.api.http import Request, Response, problems
from turnout.api.limits import Limits

IDLE, HEAD, BODY = 0, 1, 2
MIN_SLICE = 4096  # bytes fed to the parser at a time: max_head, but at least this


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing; the answer waits in `_refusal`."""


class RequestParsing:
    """Requests parsed from a connection's bytes, queued in `_pending`; see the module docstring."""

    _clock: float  # the connection's: the loop's time, read once per event
    _peer: str  # the connection's: the client's address

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[Request | Response] = deque()  # a Response: an error, then close
        self._unfed = b""  # received, not parsed yet (reading is paused meanwhile)
        self._stopped = False  # no further request will be parsed
        self._refusal: Response | None = None
        self._slice = max(MIN_SLICE, limits.max_head)
        self._max_headers = limits.max_headers
        # the request being parsed
        self._phase = IDLE
        self._messages = 0
        self._head_started = 0.0
        self._head_fed = 0  # bytes of the current head given to the parser
        self._headers = 0
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._length = -1  # the body's Content-Length, -1 when it has none
        self._auth: str | None = None
        self._inm: bytes | None = None
        self._if_match: str | None = None
        self._gzip = False

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._messages += 1
        self._phase = HEAD
        self._head_started = self._clock
        self._head_fed = self._headers = 0
        self._url = b""
        self._body = []
        self._size = 0
        self._length = -1
        self._auth = self._inm = self._if_match = None
        self._gzip = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        lower = name.lower()
        if lower == b"authorization":
            self._auth = value.decode("latin-1")
        elif lower == b"if-none-match":
            self._inm = value
        elif lower == b"accept-encoding":
            self._gzip = b"gzip" in value.lower()
        elif lower == b"if-match":
            self._if_match = value.decode("latin-1")
        elif lower == b"content-length":
            length = value.strip()
            limit = self._limits.max_body
            if length.isdigit():
                if len(length) > 18 or int(length) > limit:
                    self._refuse(413, f"body: larger than {limit} bytes")
                self._length = int(length)

    def on_headers_complete(self) -> None:
        self._phase = BODY
        if self._headers > self._max_headers:
            self._refuse(431, f"headers: more than {self._max_headers}")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limits.max_body:
            self._refuse(413, f"body: larger than {self._limits.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = IDLE
        self._head_fed = 0
        parser = self._parser
        self._pending.append(Request(
            parser.get_method().decode("latin-1"), self._url, authorization=self._auth,
            if_none_match=self._inm, if_match=self._if_match, accept_gzip=self._gzip,
            body=b"".join(self._body), keep_alive=parser.should_keep_alive(), client=self._peer))

    def _refuse(self, status: int, problem: str) -> None:
        self._refusal = problems(status, [problem])
        raise _Refusal(problem)

    # feeding the parser
    def _feed(self) -> None:
        """Give the parser what it may take now, a slice at a time (see the module docstring)."""
        data, pending, most = self._unfed, self._pending, self._limits.max_pipelined
        pos, end = 0, len(data)
        while pos < end and not self._stopped and len(pending) < most:
            size = self._next_slice(data, pos)
            piece = data if pos == 0 and size >= end else data[pos:pos + size]
            pos += len(piece)
            self._parse(piece)
        self._unfed = b"" if self._stopped else data[pos:]

    def _next_slice(self, data: bytes, pos: int) -> int:
        """How much to feed from `pos`: to the end of the head or body in sight, within limits."""
        if self._phase == BODY:
            if self._length >= 0:
                return max(1, min(self._slice, self._length - self._size))
            return self._slice
        room = min(self._limits.max_head - self._head_fed, self._slice)
        end = data.find(b"\r\n\r\n", pos, pos + room)
        return room if end < 0 else end + 4 - pos

    def _parse(self, piece: bytes) -> None:
        phase, messages = self._phase, self._messages
        try:
            self._parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc)
        else:
            if self._phase == HEAD:
                self._count_head(len(piece), phase, messages)

    def _parse_error(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._unsupported_upgrade()
        else:
            self._fail(self._refusal or problems(400, ["request: malformed HTTP"]))

    def _count_head(self, fed: int, phase: int, messages: int) -> None:
        """After a piece that ends inside a head: how much of the head the parser holds."""
        if phase == HEAD and self._messages == messages:
            self._head_fed += fed  # the whole piece belongs to this head
        elif phase == IDLE and self._messages == messages + 1:
            self._head_fed = fed  # so does a piece that began it
        else:  # begun behind another request in the same piece: not measured (see above)
            self._head_fed = len(self._url)
        limits = self._limits
        if self._head_fed >= limits.max_head:
            self._fail(problems(431, [f"headers: longer than {limits.max_head} bytes"]))
        elif self._headers > limits.max_headers:
            self._fail(problems(431, [f"headers: more than {limits.max_headers}"]))

    def _unsupported_upgrade(self) -> None:
        """An Upgrade (h2c, websocket) or CONNECT: answered as plain HTTP/1.1, then closed."""
        last = self._pending[-1] if self._pending else None
        if isinstance(last, Request):
            last.keep_alive = False  # the parser cannot go on after an upgrade
            self._stopped = True
        else:
            self._fail(problems(400, ["request: CONNECT is not supported"]))

    def _fail(self, response: Response) -> None:
        """Stop parsing; answer what came before, then `response`, then close."""
        if not self._stopped:
            self._stopped = True
            self._unfed = b""
            self._pending.append(response)
