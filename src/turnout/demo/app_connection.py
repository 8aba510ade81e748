"""One client connection of the demo app: requests parsed with httptools, answered in order.

An asyncio protocol with no framework, so one core serves thousands of requests a second.
Requests are answered one at a time in the order they came (a delayed answer holds the
ones behind it); reading pauses while more than 64 wait. A request the app leaves hanging
(`DEMO_FAIL=hang`) is never answered, nor anything behind it. On a stop, an idle or hung
connection closes at once (one never used gets `FRESH_GRACE_S` to send its first
request) and a busy one after its current answer, sent with `Connection: close`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from turnout.demo.app_answers import Answer, DemoApp, Request

FRESH_GRACE_S = 0.1  # how long a never-used connection may still send its first request


class AppConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, app: DemoApp) -> None:
        self._app = app
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._in_message = False
        self._used = False
        self._paused = False
        self._hung = False  # a request here is never answered
        self._url = b""
        self._user: str | None = None
        self._flags = ""
        self._body_len = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._app.connections.add(self)
        if self._app.closing:
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._app.forget(self)
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        self._used = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._reply_and_close(400, b'{"error": "bad request"}')
            return
        self._pump()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True
        self._url, self._user, self._body_len, self._flags = b"", None, 0, ""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"x-user-id":
            self._user = value.decode("latin-1")
        elif lower == b"x-turnout-flags":
            self._flags = value.decode("latin-1")
        elif lower == b"expect" and value.lower() == b"100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        method = self._parser.get_method().decode("latin-1")
        keep = self._parser.should_keep_alive()
        self._pending.append(Request(method, self._url, self._user, self._body_len, keep, self._flags))

    # answering
    @property
    def idle(self) -> bool:
        return self._worker is None and not self._pending and not self._in_message

    def shutdown(self) -> None:
        """Close now if idle or hung; a busy connection closes after its current response."""
        if self._transport is None or not (self.idle or self._hung):
            return
        if self._used:
            self._transport.close()
        else:
            asyncio.get_running_loop().call_later(FRESH_GRACE_S, self._close_if_idle)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _close_if_idle(self) -> None:
        if self._transport is not None and self.idle:
            self._transport.close()

    def _pump(self) -> None:
        """Answer queued requests; hand off to a task when one must wait."""
        transport = self._transport
        assert transport is not None
        while self._pending and self._worker is None and not self._hung and not transport.is_closing():
            answer = self._app.answer(self._pending[0])
            if answer.hang:
                self._hung = True
                break
            if answer.delay_s > 0:
                self._worker = asyncio.create_task(self._delayed(answer))
                return
            self._send(self._pending.popleft(), answer)
        self._flow_control(transport)
        if self._app.closing and not transport.is_closing():
            self.shutdown()

    async def _delayed(self, answer: Answer) -> None:
        await asyncio.sleep(answer.delay_s)
        self._worker = None
        self._send(self._pending.popleft(), answer)
        self._pump()

    def _send(self, request: Request, answer: Answer) -> None:
        assert self._transport is not None
        close = self._app.closing or self._app.refusing.is_set() or not request.keep_alive
        self._transport.write(self._app.render(request, answer, close=close))
        if close:
            self._pending.clear()
            self._transport.close()
        self._app.sent(answer)

    def _flow_control(self, transport: asyncio.Transport) -> None:
        if len(self._pending) > 64 and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif len(self._pending) < 8 and self._paused:
            transport.resume_reading()
            self._paused = False

    def _reply_and_close(self, status: int, body: bytes) -> None:
        assert self._transport is not None
        request = Request("GET", b"", None, 0, keep_alive=False)
        self._transport.write(self._app.render(request, Answer(status, body), close=True))
        self._transport.close()
