"""`turnout server`'s limits against real processes on 127.0.0.1: what a hostile or broken
client gets (431, 408, 413, 503, 429, a cut connection), that the server's memory stays
bounded, and that normal clients, event streams and other addresses keep being served.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.sdk.server_proc import ServerProcess

from turnout.api.server import main as server_main
from turnout.flags.store import FlagStore

CHECKOUT = {"name": "checkout", "enabled": True, "strategies": [{"name": "default"}]}
TIGHT = ["--max-header-bytes", "4096", "--max-headers", "20", "--header-timeout", "1",
         "--idle-timeout", "1", "--max-body-bytes", "1000", "--max-pipelined", "8"]


def start(db: str, *options: str, cwd: Path) -> ServerProcess:
    """`turnout server` with `options` on a free port (as ServerProcess.start, plus options)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "server", "--listen", "127.0.0.1:0", *options],
        env={**os.environ, "TURNOUT_DATABASE_URL": db}, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"turnout server did not start: {line}{proc.stdout.read()}")
    return ServerProcess(proc, line.split("listening on ")[1].strip())


class World:
    """A flag store with two tokens and one flag, and a server with tight limits on it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.folder = tmp / "svc"
        (self.folder / ".turnout").mkdir(parents=True)
        (self.folder / "turnout.yaml").write_text("service: shop\nrun:\n  command: [python3, app.py]\n")
        self.db = f"sqlite:///{self.folder / '.turnout' / 'state.db'}"
        self.store = FlagStore.open(self.db)
        self.admin = self.store.create_token("ops", "admin")
        self.client = self.store.create_token("web-sdk", "client")
        self.store.create(CHECKOUT, who="setup")
        self.server = start(self.db, *TIGHT, cwd=tmp)
        self.port = int(self.server.url.rsplit(":", 1)[1])

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket()
        sock.settimeout(5.0)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.server.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def close(self) -> None:
        assert self.server.stop() == 0
        self.store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("limits"))
    yield w
    w.close()


def get(path: str, token: str | None = None, *, close: bool = False, extra: bytes = b"") -> bytes:
    auth = b"" if token is None else b"Authorization: " + token.encode() + b"\r\n"
    conn = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + conn + extra + b"\r\n"


def read_until_closed(sock: socket.socket, deadline_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closed)."""
    raw = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        raw += chunk
    else:
        raise AssertionError(f"the server did not close the connection: {raw[:200]!r}")
    return raw


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One Content-Length response off a keep-alive connection: status, head, body."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split(b" ")[1]), head, body


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split(b" ")[1])


# -- heads ---------------------------------------------------------------------------------
def test_oversized_head_gets_431_and_close(world: World) -> None:
    with world.connect() as sock:  # just under the limit: served
        sock.sendall(get("/health", extra=b"X-Pad: " + b"a" * 3800 + b"\r\n"))
        assert read_response(sock)[0] == 200
    for head in (get("/health", extra=b"X-Pad: " + b"a" * 5000 + b"\r\n"),
                 b"GET /" + b"u" * 6000 + b" HTTP/1.1\r\n\r\n"):
        with world.connect() as sock:
            sock.sendall(head)
            raw = read_until_closed(sock)
        assert status_of(raw) == 431, raw[:300]
        assert b"Connection: close" in raw
    with world.connect() as sock:  # behind a pipelined request, in the same write
        sock.sendall(get("/health") + get("/health", extra=b"X-Pad: " + b"a" * 5000 + b"\r\n"))
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.count(b"HTTP/1.1 431") == 1, raw[:300]


def test_endless_header_line_is_cut_at_the_limit_not_buffered(world: World) -> None:
    before = world.rss_kb()
    with world.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Endless: ")
        sent, refused_at = 0, None
        try:
            while sent < 32 * 1024 * 1024:
                sock.sendall(b"b" * 65536)
                sent += 65536
                readable, _, _ = select.select([sock], [], [], 0.001)
                if readable:
                    refused_at = sent
                    break
        except (BrokenPipeError, ConnectionResetError):
            refused_at = sent
        raw = read_until_closed(sock)
    # what was sent beyond the limit sat in the kernels' socket buffers, not in the server
    assert refused_at is not None and refused_at < 16 * 1024 * 1024, refused_at
    assert status_of(raw) == 431
    assert world.rss_kb() - before < 4096


def test_too_many_headers_get_431(world: World) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(19))  # + Host = 20
    with world.connect() as sock:
        sock.sendall(get("/health", extra=headers))
        assert read_response(sock)[0] == 200
        sock.sendall(get("/health", extra=headers + b"X-One-More: v\r\n"))
        raw = read_until_closed(sock)
    assert status_of(raw) == 431 and b"headers: more than 20" in raw


@pytest.mark.serial  # cut between 0.9 and 1.5 s
def test_trickled_head_is_cut_at_the_deadline(world: World) -> None:
    """One byte every 0.2 s never extends the 1 s deadline measured from the first byte."""
    head = get("/health", world.client)
    with world.connect() as sock:
        first = time.monotonic()
        answer = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                answer = read_until_closed(sock)
                break
            assert time.monotonic() - first < 3.0, "still open after 3 s"
        cut_after = time.monotonic() - first
    assert 0.9 <= cut_after <= 1.5, cut_after
    assert answer == b"" or status_of(answer) == 408, answer[:200]


# -- keep-alive and pipelining -------------------------------------------------------------
@pytest.mark.serial  # a request every 0.5 s against a 1 s idle timeout, closed within 0.9-1.6 s
def test_idle_connection_is_closed_after_the_idle_timeout_not_before(world: World) -> None:
    with world.connect() as sock:
        for _ in range(4):  # busy for 2 s, a request every 0.5 s: kept open
            sock.sendall(get("/health"))
            assert read_response(sock)[0] == 200
            time.sleep(0.5)
        sock.sendall(get("/health"))
        assert read_response(sock)[0] == 200
        answered = time.monotonic()
        assert read_until_closed(sock) == b""
        idle = time.monotonic() - answered
    assert 0.9 <= idle <= 1.6, idle


def _paths(raw: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'no route GET ([^"]+)"', raw)]


def _answers(sock: socket.socket, count: int, deadline_s: float = 20.0) -> bytes:
    """Read until `count` 404 answers came (counted per chunk, across chunk borders)."""
    raw, seen, end = bytearray(), 0, time.monotonic() + deadline_s
    mark = b"HTTP/1.1 404"
    while seen < count:
        assert time.monotonic() < end, f"{seen} of {count} answers"
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {seen} of {count} answers"
        start = max(0, len(raw) - len(mark) + 1)
        raw += chunk
        seen += raw.count(mark, start)
    return bytes(raw)


def test_a_thousand_pipelined_requests_in_one_write_are_answered_in_order(world: World) -> None:
    before = world.rss_kb()
    requests = b"".join(b"GET /p/%04d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(1000))
    with world.connect() as sock:
        sock.sendall(requests)
        raw = _answers(sock, 1000)
    assert _paths(raw) == [f"/p/{i:04d}" for i in range(1000)]
    assert world.rss_kb() - before < 4096


def test_a_client_that_does_not_read_is_not_buffered_for(world: World) -> None:
    """20,000 pipelined requests (20 MB, answers 22 MB) and no reading for 0.8 s: the server
    stops answering once the socket's buffers are full, and stops parsing once 8 wait, so
    its memory stays put; then everything is answered, in order."""
    count, tail = 20_000, "/" + "a" * 1000
    requests = b"".join(b"GET /q/%05d%b HTTP/1.1\r\n\r\n" % (i, tail.encode()) for i in range(count))
    before = world.rss_kb()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(30.0)
    sock.connect(("127.0.0.1", world.port))
    sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)
    with sock:
        sender.start()
        time.sleep(0.8)  # under the 1 s idle timeout, which cuts clients that never read
        stalled_growth = world.rss_kb() - before
        raw = _answers(sock, count, deadline_s=60.0)
        sender.join(10)
    assert stalled_growth < 8192, f"RSS grew {stalled_growth} KiB while the client did not read"
    paths = _paths(raw)
    assert len(paths) == count
    assert paths == [f"/q/{i:05d}{tail}" for i in range(count)]


# -- bodies -----------------------------------------------------------------------------------
def test_body_over_the_limit_gets_413(world: World) -> None:
    metrics = b"POST /api/client/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: %b\r\n" % world.client.encode()
    with world.connect() as sock:  # declared too large: answered before the body is sent
        sock.sendall(metrics + b"Content-Length: 5000\r\n\r\n")
        raw = read_until_closed(sock)
    assert status_of(raw) == 413
    with world.connect() as sock:  # chunked, growing past the limit
        sock.sendall(metrics + b"Transfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n")
        sock.sendall(b"200\r\n" + b"x" * 512 + b"\r\n")
        raw = read_until_closed(sock)
    assert status_of(raw) == 413
    with world.connect() as sock:  # within the limit: read and judged (400, not JSON)
        sock.sendall(metrics + b"Content-Length: 900\r\n\r\n" + b"x" * 900)
        assert read_response(sock)[0] == 400


# -- event streams ----------------------------------------------------------------------------
def test_an_open_event_stream_outlives_the_idle_timeout(world: World) -> None:
    with world.connect() as stream, world.connect() as idle:
        stream.sendall(get("/api/client/stream", world.client))
        first = b""
        end = time.monotonic() + 3.0
        while b"event: state" not in first and time.monotonic() < end:  # the head may come alone
            first += stream.recv(65536)
        assert b"200 OK" in first and b"event: state" in first
        opened = time.monotonic()
        assert read_until_closed(idle) == b""  # the plain keep-alive one is closed meanwhile
        time.sleep(max(0.0, 2.5 - (time.monotonic() - opened)))
        world.store.set_enabled("checkout", False, who="test")
        try:
            later = b""
            end = time.monotonic() + 3.0
            while b"event: state" not in later and time.monotonic() < end:
                later += stream.recv(65536)
        finally:
            world.store.set_enabled("checkout", True, who="test")
    assert b"event: state" in later and b'"enabled":false' in later


def test_a_stream_can_be_the_first_request_of_a_token(world: World) -> None:
    """A token the server has not cached yet is looked up first: the stream still opens."""
    fresh = world.store.create_token("new-sdk", "client")
    with world.connect() as stream:
        stream.sendall(get("/api/client/stream", fresh))
        first = b""
        end = time.monotonic() + 3.0
        while b"event: state" not in first and time.monotonic() < end:
            first += stream.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 OK") and b"event: state" in first, first[:200]


# -- tokens --------------------------------------------------------------------------------
def ask(world: World, path: str, token: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with world.connect(source) as sock:
        sock.sendall(get(path, token, close=True))
        raw = read_until_closed(sock)
    return status_of(raw), raw


def flags_cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """`turnout flags ARGS` in the service folder (its state database is the server's)."""
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "turnout", "flags", *args], check=False,
                          cwd=world.folder, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.serial  # refused within 1.5 s of the revocation
def test_a_revoked_token_gets_401_from_the_running_server(world: World) -> None:
    secret = world.store.create_token("laptop", "client")
    assert ask(world, "/api/client/features", secret)[0] == 200  # now in the server's cache
    cli = flags_cli(world, "token", "revoke", "laptop")
    assert cli.returncode == 0, cli.stderr
    revoked_at = time.monotonic()
    while (status := ask(world, "/api/client/features", secret)[0]) == 200:
        assert time.monotonic() - revoked_at < 3.0, "still accepted 3 s after revocation"
        time.sleep(0.05)
    assert status == 401
    assert time.monotonic() - revoked_at < 1.5
    assert ask(world, "/api/client/features", world.client)[0] == 200
    listed = flags_cli(world, "token", "list", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["laptop"]["revoked_at"] is not None and rows["web-sdk"]["revoked_at"] is None
    again = flags_cli(world, "token", "revoke", "laptop")
    assert again.returncode == 2 and "no valid token called 'laptop'" in again.stderr


@pytest.mark.parametrize(("option", "value"), [
    ("--idle-timeout", "soon"), ("--header-timeout", "0"), ("--max-connections", "-3"),
    ("--max-header-bytes", "10"), ("--max-pipelined", "1.5"), ("--auth-failures", "0"),
    ("--auth-block", "nan"), ("--max-body-bytes", "9" * 5000),
])
def test_bad_limit_values_exit_2_naming_the_option(option: str, value: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        server_main([option, value])
    assert exited.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err


def test_the_cli_refuses_a_bad_limit_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "turnout", "server", "--idle-timeout", "-1"],
                            check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "TURNOUT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"})
    assert result.returncode == 2
    assert "argument --idle-timeout: expected seconds" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.db").exists()


# -- connections and failed authentications (servers of their own) -----------------------------
@pytest.fixture
def small(world: World) -> Iterator[tuple[World, ServerProcess]]:
    server = start(world.db, "--max-connections", "4", "--auth-failures", "5",
                   "--auth-window", "10", "--auth-block", "1.5", cwd=world.tmp)
    yield world, server
    assert server.stop() == 0


def _connect(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5.0)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    return sock


def test_connections_over_the_maximum_get_503_while_the_others_keep_working(
        small: tuple[World, ServerProcess]) -> None:
    world, server = small
    held = [_connect(server) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(get("/api/client/features", world.client))
            assert read_response(sock)[0] == 200
        for _ in range(3):
            with _connect(server) as extra:
                extra.sendall(get("/api/client/features", world.client))
                raw = read_until_closed(extra)
            assert status_of(raw) == 503 and b"Retry-After: 1" in raw
        for sock in held:  # the four held connections are still served
            sock.sendall(get("/api/client/features", world.client))
            assert read_response(sock)[0] == 200
        held.pop().close()
        end = time.monotonic() + 3.0
        while True:  # a freed slot is taken by the next client
            with _connect(server) as extra:
                extra.sendall(get("/health", close=True))
                if status_of(read_until_closed(extra)) == 200:
                    break
            assert time.monotonic() < end, "no slot freed 3 s after a client left"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


def _ask(server: ServerProcess, token: str, source: str) -> tuple[int, bytes]:
    with _connect(server, source) as sock:
        sock.sendall(get("/api/client/features", token, close=True))
        raw = read_until_closed(sock)
    return status_of(raw), raw


@pytest.mark.serial  # a 1.5 s block over within 3 s
def test_repeated_bad_tokens_get_429_and_other_addresses_still_work(
        small: tuple[World, ServerProcess]) -> None:
    world, server = small
    attacker = "127.0.0.2"
    statuses = [_ask(server, f"guess-{i}", attacker)[0] for i in range(5)]
    assert statuses == [401] * 5
    blocked_at = time.monotonic()
    status, raw = _ask(server, "guess-5", attacker)
    assert status == 429 and (b"Retry-After: 2" in raw or b"Retry-After: 1" in raw), raw[:300]
    assert _ask(server, world.client, attacker)[0] == 429  # the token is not even looked at
    assert _ask(server, world.client, "127.0.0.1")[0] == 200  # another address is served
    while _ask(server, world.client, attacker)[0] == 429:
        assert time.monotonic() - blocked_at < 3.0, "still blocked 3 s into a 1.5 s block"
        time.sleep(0.1)
    assert time.monotonic() - blocked_at >= 1.0
