"""One client connection of `turnout server`: in-order answers, flow control and timeouts.

A connection parses requests (`turnout.api.parsing`, its base class), and answers them
strictly in order, so pipelined and keep-alive requests work. What it holds for a client
is bounded (`turnout.api.limits`):

- **Heads and bodies** are measured while parsing: 431 past `max_head` bytes or
  `max_headers` lines, 413 past `max_body` (see `turnout.api.parsing`).
- **Pipelining.** At most `max_pipelined` parsed requests wait behind the one being
  answered (a small read, under 1 KiB, is parsed whole and may add a few more). Beyond
  that the rest of what arrived stays unparsed and reading pauses, so the kernel's
  buffers and then TCP push back on the client; while the client does not read its
  answers (the transport paused writing) no further request is answered.
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
`max_connections` get the same treatment from `turnout.api.refused.Refused`, with a 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import cast

import httptools

from turnout.api.http import Handler, Request, Response, Stream, problems
from turnout.api.limits import DEFAULT, Limits
from turnout.api.parsing import BODY, HEAD, IDLE, RequestParsing

WHOLE_READ = 1024  # a read this small, on a connection with nothing waiting, is parsed whole
LINGER_S = 2.0
STREAM_BACKLOG = 1024 * 1024  # bytes of events an SSE client may leave unread


class Connection(RequestParsing, asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, handler: Handler, connections: set[Connection],
                 limits: Limits = DEFAULT) -> None:
        super().__init__(limits)
        self._handler = handler
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._worker: asyncio.Task[None] | None = None
        self._streaming = False
        self._lingering = False  # an error was answered; input is discarded until closed
        self._eof = False
        self._read_paused = False
        self._write_paused = False
        self._whole = min(WHOLE_READ, limits.max_head)  # a read this small is parsed at once
        self._clock = self._loop.time()  # read once per event, not once per callback
        self._since = self._clock  # when the connection last made progress (see `check`)
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
