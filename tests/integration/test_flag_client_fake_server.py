"""FlagClient against a small server that follows the client API contract (features + SSE).

The server here is a real HTTP server on 127.0.0.1 in a thread, so the client's network
code (ETag, the stream, reconnects, polling, the cache) runs for real; it can be stopped
and started again on the same port to play a control plane that dies and comes back.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from turnout.flags.client import ClientEvent, ClientStatus, FlagClient, Notice

TOKEN = "client-secret"


def flag(name: str, enabled: bool = True) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": []}


class FakeFlagServer:
    """GET /api/client/features (ETag, 304) and GET /api/client/stream (event: state)."""

    def __init__(self) -> None:
        self.features: list[dict[str, Any]] = [flag("alpha"), flag("beta", False)]
        self.revision = 1
        self.cond = threading.Condition()
        self.port = 0
        self.fetches = 0
        self.streams = 0
        self.stream_broken = False
        self._server: ThreadingHTTPServer | None = None
        self._open: set[socket.socket] = set()
        self._stopping = False

    def document(self) -> dict[str, Any]:
        return {"version": 2, "features": self.features, "segments": [],
                "meta": {"revision": self.revision}}

    def change(self, *features: dict[str, Any]) -> None:
        with self.cond:
            self.features = list(features)
            self.revision += 1
            self.cond.notify_all()

    def start(self) -> None:
        self._stopping = False
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != TOKEN:
                    self._send(401, b'{"error": "unauthorized"}')
                elif self.path == "/api/client/features":
                    self._features()
                elif self.path == "/api/client/stream" and fake.stream_broken:
                    with fake.cond:
                        fake.streams += 1
                    self._send(503, b'{"error": "stream unavailable"}')
                elif self.path == "/api/client/stream":
                    self._stream()
                else:
                    self._send(404, b"{}")

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _features(self) -> None:
                with fake.cond:
                    fake.fetches += 1
                    etag, body = f'"{fake.revision}"', json.dumps(fake.document()).encode()
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                else:
                    self._send(200, body, {"ETag": etag, "Content-Type": "application/json"})

            def _stream(self) -> None:
                with fake.cond:
                    fake.streams += 1
                    fake._open.add(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                sent = -1
                try:
                    while True:
                        with fake.cond:
                            fake.cond.wait_for(lambda last=sent: fake._stopping or fake.revision != last, 1.0)
                            if fake._stopping:
                                return
                            if fake.revision == sent:
                                self.wfile.write(b": ping\n\n")
                                continue
                            sent, doc = fake.revision, fake.document()
                        self.wfile.write(f"event: state\ndata: {json.dumps(doc)}\n\n".encode())
                        self.wfile.flush()
                except OSError:
                    return
                finally:
                    with fake.cond:
                        fake._open.discard(self.connection)
                    self.close_connection = True

        return Handler


class Recorder:
    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.cond = threading.Condition()

    def __call__(self, notice: Notice) -> None:
        with self.cond:
            self.notices.append(notice)
            self.cond.notify_all()

    def wait(self, event: ClientEvent, count: int = 1, timeout: float = 5.0) -> Notice:
        def found() -> list[Notice]:
            return [n for n in self.notices if n.event is event]

        with self.cond:
            assert self.cond.wait_for(lambda: len(found()) >= count, timeout), (event, self.notices)
            return found()[count - 1]


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[FakeFlagServer]:
    fake = FakeFlagServer()
    fake.start()
    yield fake
    if fake._server is not None:
        fake.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., tuple[FlagClient, Recorder]]]:
    clients: list[FlagClient] = []

    def make(url: str, token: str = TOKEN, **options: Any) -> tuple[FlagClient, Recorder]:
        client = FlagClient(url, token, **options)
        recorder = Recorder()
        client.add_listener(recorder)
        clients.append(client)
        client.start()
        return client, recorder

    yield make
    for client in clients:
        client.close()


@pytest.mark.serial  # a change arrives within 1 s
def test_initial_fetch_then_stream_changes(server: FakeFlagServer, make_client: Any) -> None:
    client, notes = make_client(server.url)
    assert client.wait_for_state(5.0)
    notes.wait(ClientEvent.READY)
    assert client.status is ClientStatus.READY
    assert client.evaluate("alpha").enabled and not client.evaluate("beta").enabled
    wait_until(lambda: server.streams == 1)
    time.sleep(0.1)

    started = time.monotonic()
    server.change(flag("alpha"), flag("beta", True), flag("gamma"))
    changed = notes.wait(ClientEvent.CHANGED)
    assert time.monotonic() - started < 1.0
    assert changed.flags_changed == ("beta", "gamma")
    assert changed.revision == 2
    assert client.is_enabled("beta") and client.is_enabled("gamma")
    assert server.fetches == 1  # the change came by stream, not by polling


@pytest.mark.serial  # a change arrives within 1 s
def test_server_down_goes_stale_and_recovers(server: FakeFlagServer, make_client: Any) -> None:
    client, notes = make_client(server.url, poll_interval=0.2, backoff_max=0.5)
    notes.wait(ClientEvent.READY)
    wait_until(lambda: server.streams == 1)

    server.stop()
    stale = notes.wait(ClientEvent.STALE)
    assert stale.message and "fetching flags failed" in stale.message
    assert client.status is ClientStatus.STALE
    assert client.is_enabled("alpha")  # the last state keeps answering

    server.change(flag("alpha", False))  # changed while nobody could see it
    server.start()
    notes.wait(ClientEvent.READY, count=2)
    notes.wait(ClientEvent.CHANGED)
    assert not client.is_enabled("alpha")
    wait_until(lambda: server.streams == 2)  # the stream is back too
    server.change(flag("alpha", True))
    notes.wait(ClientEvent.CHANGED, count=2, timeout=1.0)
    assert client.is_enabled("alpha")


@pytest.mark.serial  # two polls of 0.1 s within 0.35 s
def test_polling_only(server: FakeFlagServer, make_client: Any) -> None:
    client, notes = make_client(server.url, stream=False, poll_interval=0.1)
    notes.wait(ClientEvent.READY)
    server.change(flag("alpha", False))
    notes.wait(ClientEvent.CHANGED, timeout=2.0)
    assert not client.is_enabled("alpha")
    assert server.streams == 0
    fetches = server.fetches
    time.sleep(0.35)
    assert server.fetches >= fetches + 2  # 304s keep coming at the poll interval
    assert client.status is ClientStatus.READY


@pytest.mark.serial  # counts retries in 0.8 s
def test_broken_stream_falls_back_to_polling_and_retries_with_backoff(
        server: FakeFlagServer, make_client: Any) -> None:
    server.stream_broken = True
    client, notes = make_client(server.url, poll_interval=0.1, backoff_max=0.4)
    notes.wait(ClientEvent.READY)
    server.change(flag("alpha", False))
    notes.wait(ClientEvent.CHANGED, timeout=2.0)  # by polling: the stream never worked
    assert not client.is_enabled("alpha")
    assert client.status is ClientStatus.READY  # the server answers, so the flags are current
    wait_until(lambda: server.streams >= 3)
    tries = server.streams
    time.sleep(0.8)
    assert 1 <= server.streams - tries <= 4  # retried, but backed off (at most every 0.4 s)

    server.stream_broken = False
    wait_until(lambda: len(server._open) == 1, 2.0)  # the stream is back
    fetches = server.fetches
    server.change(flag("alpha", True))
    notes.wait(ClientEvent.CHANGED, count=2, timeout=2.0)
    assert client.is_enabled("alpha")
    time.sleep(0.3)
    assert server.fetches == fetches  # with the stream up, polling has stopped


def test_cache_used_when_server_is_down_at_start(server: FakeFlagServer, make_client: Any,
                                                 tmp_path: Path) -> None:
    cache = tmp_path / "flags.json"
    first, notes = make_client(server.url, cache_path=cache)
    notes.wait(ClientEvent.READY)
    server.change(flag("alpha"), flag("beta", True))
    notes.wait(ClientEvent.CHANGED)
    wait_until(lambda: json.loads(cache.read_text())["meta"]["revision"] == 2)
    first.close()
    server.stop()

    second, notes2 = make_client(server.url, cache_path=cache, poll_interval=0.2, backoff_max=0.3)
    assert second.wait_for_state(3.0)
    stale = notes2.wait(ClientEvent.STALE)
    assert stale.revision == 2
    assert second.status is ClientStatus.STALE
    assert second.is_enabled("beta")
    assert not [n for n in notes2.notices if n.event is ClientEvent.ERROR]

    server.start()
    notes2.wait(ClientEvent.READY)
    assert second.status is ClientStatus.READY


def test_no_server_and_no_cache_is_an_error(make_client: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, notes = make_client(f"http://127.0.0.1:{port}", backoff_max=0.2)
    notes.wait(ClientEvent.ERROR)
    assert client.status is ClientStatus.ERROR
    assert not client.wait_for_state(0.1)
    result = client.evaluate("alpha")
    assert (result.enabled, result.error_code) == (False, "FLAG_NOT_FOUND")


def test_wrong_token_is_an_error(server: FakeFlagServer, make_client: Any) -> None:
    client, notes = make_client(server.url, token="nope", backoff_max=0.2)
    error = notes.wait(ClientEvent.ERROR)
    assert error.message and "401" in error.message
    assert client.status is ClientStatus.ERROR


@pytest.mark.serial  # closed within 1 s
def test_close_is_prompt_while_the_stream_is_open(server: FakeFlagServer, make_client: Any) -> None:
    client, notes = make_client(server.url)
    notes.wait(ClientEvent.READY)
    wait_until(lambda: server.streams == 1)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert client.status is ClientStatus.CLOSED
    thread = client._thread
    assert thread is not None and not thread.is_alive()
