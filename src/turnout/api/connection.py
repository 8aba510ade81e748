"""One client connection of `turnout server`: httptools parsing, in-order answers, and limits.

A connection parses requests, keeps only the headers the API reads (authorization,
conditional, encoding, If-Match), and answers them strictly in order, so pipelined and
keep-alive requests work. What it holds for a client is bounded (`turnout.api.limits`):

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
- **Pipelining.** At most `max_pipelined` parsed requests wait behind the one being
  answered (a small read, under 1 KiB, is parsed whole and may add a few more). Beyond
  that the rest of what arrived stays unparsed and reading pauses, so the kernel's
  buffers and then TCP push back on the client; while the client does not read its
  answers (the transport paused writing) no further request is answered.
- **Bodies.** A `Content-Length` over `max_body`, or a chunked body growing past it, is
  answered 413 without reading the rest.
- **Time.** `check(now)` is called by the server's sweep a few times per timeout (one
  pass over every connection rather than a timer per request): a head not complete
  `header_timeout` after its first byte gets 408, whatever it trickles; a new connection
  that begins no request within `header_timeout` is closed; a body that stalls for
  `idle_timeout` gets 408; a keep-alive connection idle for `idle_timeout` is closed; a
  client that reads none of its answers for `idle_timeout` is cut. Event streams are
  long-lived by design and are never idle-closed; a stream whose client stops reading
  is cut once a megabyte of events waits for it.

The errors a connection answers itself (400, 408, 413, 431) close it gently: the answer,
then FIN, then whatever the client still sends is discarded for up to `LINGER_S` before
the socket closes, so the client reads the answer rather than a reset. Connections over
`max_connections` get the same treatment from `Refused`, with a 503.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import cast

import httptools

from turnout.api.http import Handler, Request, Response, Stream, problems, render
from turnout.api.limits import DEFAULT, Limits

IDLE, HEAD, BODY = 0, 1, 2
MIN_SLICE = 4096  # bytes fed to the parser at a time: max_head, but at least this
WHOLE_READ = 1024  # a read this small, on a connection with nothing waiting, is parsed whole
LINGER_S = 2.0
STREAM_BACKLOG = 1024 * 1024  # bytes of events an SSE client may leave unread
MAX_REFUSING = 256  # refused connections lingering at once; more are closed at once
BUSY = render(503, b'{"problems":["server: too many connections, retry later"]}',
              b"Content-Type: application/json\r\nRetry-After: 1\r\n", close=True)


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing; the answer waits in `_refusal`."""


class Connection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, handler: Handler, connections: set[Connection],
                 limits: Limits = DEFAULT) -> None:
        self._handler = handler
        self._connections = connections
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._pending: deque[Request | Response] = deque()  # a Response: an error, then close
        self._unfed = b""  # received, not parsed yet (reading is paused meanwhile)
        self._worker: asyncio.Task[None] | None = None
        self._streaming = False
        self._stopped = False  # no further request will be parsed
        self._lingering = False  # an error was answered; input is discarded until closed
        self._eof = False
        self._read_paused = False
        self._write_paused = False
        self._refusal: Response | None = None
        self._whole = min(WHOLE_READ, limits.max_head)  # a read this small is parsed at once
        self._slice = max(MIN_SLICE, limits.max_head)
        self._max_headers = limits.max_headers
        self._clock = self._loop.time()  # read once per event, not once per callback
        self._since = self._clock  # when the connection last made progress (see `check`)
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
        # counted from here: several may be accepted before the first connection_made
        connections.add(self)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._since = self._loop.time()
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._streaming = False
        self._stopped = True
        self._pending.clear()
        self._unfed = b""
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # a stream's client has nothing more to say; an error is being answered
        self._clock = self._loop.time()
        if self._phase == BODY:  # not while idle: bytes that begin no request keep no one open
            self._since = self._clock
        if self._unfed:
            self._unfed += data
        elif not self._pending and self._phase == IDLE and len(data) <= self._whole:
            messages = self._messages  # the usual case: a request or two in one small read
            try:
                self._parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._parse_error(exc)
            else:
                if self._phase == HEAD:
                    self._count_head(len(data), IDLE, messages)
            self._answer_pending()
            return
        else:
            self._unfed = data
        self._pump()

    def eof_received(self) -> bool:
        """The client finished sending: answer what it asked, then close."""
        if self._lingering or self._streaming:
            return False
        self._eof = True
        self._pump()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._clock = self._since = self._loop.time()
        self._pump()

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

    # reading
    def _pump(self) -> None:
        """Parse while the queue has room, answer what can be answered; repeat."""
        room = self._limits.max_pipelined
        while True:
            if self._unfed and not self._stopped and len(self._pending) < room:
                self._feed()
            self._answer_pending()
            if not self._unfed or self._stopped or len(self._pending) >= room:
                break
        if self._unfed or self._read_paused:
            self._flow()

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

    def _flow(self) -> None:
        """Read from the client only while what it sent can be parsed."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._unfed and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not self._unfed and self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # answering
    def _answer_pending(self) -> None:
        transport = self._transport
        # nothing waits while streaming, closing or closed: those clear the queue
        while self._pending and self._worker is None and not self._write_paused:
            request = self._pending.popleft()
            if isinstance(request, Response):
                self._linger(request)
                return
            outcome = self._handler(request)
            if isinstance(outcome, Response):
                self._answer(request, outcome)
            elif isinstance(outcome, Stream):
                self._start_stream(outcome)
            else:
                self._worker = asyncio.ensure_future(self._await(request, outcome))
        if (self._eof and transport is not None and not self._pending and self._worker is None
                and not self._unfed and not self._streaming):
            transport.close()

    async def _await(self, request: Request, pending: Awaitable[Response | Stream]) -> None:
        try:
            response = await pending
        except Exception as exc:  # a handler bug must not kill the connection silently
            response = problems(500, [f"server: {type(exc).__name__}: {exc}"])
        self._worker = None
        self._clock = self._loop.time()
        if isinstance(response, Stream):  # a stream whose token had to be looked up first
            self._start_stream(response)
            return
        self._answer(request, response)
        self._pump()

    def _answer(self, request: Request, response: Response) -> None:
        close = not request.keep_alive
        self._write(response.render(close=close), close=close)
        self._since = self._clock

    def _write(self, data: bytes, *, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            self._stopped = True
            self._pending.clear()
            self._unfed = b""
            transport.close()

    def _linger(self, response: Response) -> None:
        """Answer an error of the connection's own, then FIN; close after `LINGER_S` at most."""
        transport = self._transport
        if transport is None:
            return
        self._lingering = self._stopped = True
        self._pending.clear()
        self._unfed = b""
        self._since = self._loop.time()
        transport.write(response.render(close=True))
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _start_stream(self, stream: Stream) -> None:
        self._streaming = self._stopped = True
        self._pending.clear()
        self._unfed = b""
        self._write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + stream.headers
                    + b"Connection: keep-alive\r\n\r\n", close=False)
        stream.attach(self)

    # the server's sweep
    def check(self, now: float) -> None:
        """Apply the timeouts (see the module docstring); called a few times per timeout."""
        transport, limits = self._transport, self._limits
        if transport is None:
            if now - self._since > LINGER_S:  # accepted but never connected
                self._connections.discard(self)
            return
        if self._streaming:
            return
        if transport.is_closing() or self._lingering:
            if now - self._since > LINGER_S:
                transport.abort()  # the client never read its last answer, or never left
        elif self._worker is not None or self._pending:
            if self._write_paused and now - self._since > limits.idle_timeout:
                transport.abort()  # it sends requests and reads none of the answers
        elif self._phase == HEAD:
            if now - self._head_started > limits.header_timeout:
                self._fail(problems(408, [f"request: head not complete after "
                                          f"{limits.header_timeout:g} s"]))
                self._pump()
        elif self._phase == BODY:  # since: the last piece of body, or the head's start
            if now - max(self._since, self._head_started) > limits.idle_timeout:
                self._fail(problems(408, [f"body: nothing received for {limits.idle_timeout:g} s"]))
                self._pump()
        elif now - self._since > (limits.idle_timeout if self._messages else limits.header_timeout):
            self._stopped = True
            transport.close()

    # StreamSink
    def send(self, data: bytes) -> None:
        transport = self._transport
        if not data or not self._streaming or transport is None:
            return
        if transport.get_write_buffer_size() > max(STREAM_BACKLOG, 4 * len(data)):
            self._streaming = False  # the client stopped reading: drop it, not the memory
            transport.abort()
            return
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
