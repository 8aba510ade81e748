"""The builtin router as a real process: routing, stickiness, rules, streaming, admin API.

Upstreams are small httptools servers in the test process on 127.0.0.1 port 0; each answers
with its name in `X-Version` and in the body. The proxy runs as its own supervisor + worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import signal
import socket
import stat
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from httptools import HttpRequestParser

from turnout.errors import RouterError
from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, Timeouts, UserKey


class _UpstreamConn(asyncio.Protocol):
    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.served = 0
        self.echo = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.digest = hashlib.sha256()
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.echo = self.url.startswith(b"/echo")
        if self.echo:
            self._head(b"Transfer-Encoding: chunked\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.digest.update(body)
        if self.echo:
            self._write(b"%x\r\n%s\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.served += 1
        self.server.requests += 1
        if self.server.one_shot and self.served > 1:
            self.transport.close()  # a keep-alive connection the server gave up on
            return
        if self.echo:
            self._write(b"0\r\n\r\n")
            return
        url = urlsplit(self.url.decode())
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/sleep":
            loop = asyncio.get_running_loop()
            loop.call_later(float(query["s"]), self._answer, url.path, query)
        else:
            self._answer(url.path, query)

    def _head(self, extra: bytes) -> None:
        name = self.server.name.encode()
        self._write(b"HTTP/1.1 200 OK\r\nX-Version: %s\r\n%s\r\n" % (name, extra))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _answer(self, path: str, query: dict[str, str]) -> None:
        if path in {"/eof", "/cut"}:  # a body ended by closing, and one cut short
            framing = b"" if path == "/eof" else b"Content-Length: 100\r\n"
            self._head(b"Content-Type: text/plain\r\n" + framing)
            self._write(b"until the end\r\nContent-Length: 3\r\n")
            assert self.transport is not None
            self.transport.close()
            return
        if path == "/big":
            self._head(b"Transfer-Encoding: chunked\r\n")
            piece = b"x" * 65536
            for _ in range(int(query["n"]) // len(piece)):
                self._write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self._write(b"0\r\n\r\n")
            return
        if path == "/drip":  # server-sent events: one every `s` seconds, `n` of them
            self._head(b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n")
            loop = asyncio.get_running_loop()
            count, gap = int(query["n"]), float(query["s"])
            for i in range(count):
                event = b"data: %d\n\n" % i
                loop.call_later(i * gap, self._write, b"%x\r\n%s\r\n" % (len(event), event))
            loop.call_later(count * gap, self._write, b"0\r\n\r\n")
            return
        if path == "/headers":
            body = b"".join(b"%s: %s\n" % h for h in self.headers)
        elif path == "/digest":
            body = b"%d %s" % (self.size, self.digest.hexdigest().encode())
        else:
            body = self.server.name.encode()
        self._head(b"Content-Length: %d\r\n" % len(body))
        if self.parser.get_method() != b"HEAD":
            self._write(body)


class Upstream:
    """A backend named `name`; `one_shot` closes a kept-alive connection at its 2nd request."""

    def __init__(self, name: str, *, one_shot: bool = False) -> None:
        self.name = name
        self.one_shot = one_shot
        self.requests = 0
        self.conns: set[_UpstreamConn] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Upstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamConn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()


def pool(revision: str, weight: int, *ups: Upstream) -> Pool:
    backends = tuple(Backend(id=f"{revision}-{i}", address=u.address) for i, u in enumerate(ups))
    return Pool(revision=revision, version=revision, weight=weight, backends=backends)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tp-"))  # short: unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Running:
    def __init__(self, router: BuiltinRouter, port: int, preview_port: int) -> None:
        self.router = router
        self.url = f"http://127.0.0.1:{port}"
        self.preview_url = f"http://127.0.0.1:{preview_port}"


@pytest.fixture
async def proxy(state_dir: Path) -> AsyncIterator[Running]:
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen="127.0.0.1:0")
    await router.ensure_running()
    health = await router.health()
    port = int(str(health["listen"]).rsplit(":", 1)[1])
    preview = int(str(health["preview_listen"]).rsplit(":", 1)[1])
    try:
        yield Running(router, port, preview)
    finally:
        await router.stop()
        await router.aclose()


@pytest.fixture
async def ups() -> AsyncIterator[list[Upstream]]:
    servers = [await Upstream(name).start() for name in ("old", "new", "other")]
    yield servers
    for server in servers:
        await server.close()


async def versions(url: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    """`n` GETs of `/` over 8 keep-alive connections; X-Version (or status) of each answer."""
    host, port = urlsplit(url).netloc.split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    seen: Counter[str] = Counter()

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(count):
                writer.write(request)
                head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
                fields = dict(
                    line.lower().split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line
                )
                await reader.readexactly(int(fields["content-length"]))
                seen[fields.get("x-version", head.split(" ")[1])] += 1
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(one(n // 8 + (i < n % 8)) for i in range(8)))
    return seen


async def test_weights_hold_within_two_points(proxy: Running, ups: list[Upstream]) -> None:
    old, new, _ = ups
    await proxy.router.apply(
        RoutingTable(generation=1, pools=(pool("new", 10, new), pool("old", 90, old)))
    )
    seen = await versions(proxy.url, 5000)
    assert sum(seen.values()) == 5000
    assert abs(seen["new"] / 5000 - 0.10) <= 0.02, seen
    stats = await proxy.router.stats()
    assert stats.generation == 1
    assert stats.revisions["new"].requests + stats.revisions["old"].requests == 5000
    assert stats.revisions["old"].responses_5xx == 0


async def test_user_key_sticks_and_only_moves_old_to_new(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, new, _ = ups
    users = [f"user-{i}" for i in range(120)]

    async def assignment(client: httpx.AsyncClient) -> dict[str, str]:
        result = {}
        for user in users:
            response = await client.get(f"{proxy.url}/", headers={"X-User-Id": user})
            result[user] = response.headers["x-version"]
        return result

    history = []
    async with httpx.AsyncClient(timeout=5) as client:
        for generation, weight in enumerate((10, 10, 50, 90), start=1):
            table = RoutingTable(
                generation=generation,
                pools=(pool("new", weight, new), pool("old", 100 - weight, old)),
            )
            await proxy.router.apply(table)
            history.append(await assignment(client))
    assert history[0] == history[1]  # same weights: every user sees the same revision
    for before, after in itertools.pairwise(history):
        assert all(after[u] == "new" for u in users if before[u] == "new")
    shares = [sum(v == "new" for v in h.values()) for h in history]
    assert shares[0] < shares[2] < shares[3]


async def test_match_rules_always_reach_their_target(proxy: Running, ups: list[Upstream]) -> None:
    old, new, _ = ups
    rules = (
        MatchRule(revision="new", header="X-Canary", values=("yes",)),
        MatchRule(revision="new", cookie="beta", values=("1",)),
        MatchRule(revision="new", users=("alice",)),
    )
    table = RoutingTable(
        generation=1,
        pools=(pool("new", 0, new), pool("old", 100, old)),
        rules=rules,
        user_key=UserKey(header="X-User-Id", cookie="uid"),
    )
    await proxy.router.apply(table)
    assert await versions(proxy.url, 40, {"X-Canary": "yes"}) == {"new": 40}
    assert await versions(proxy.url, 40, {"Cookie": "a=b; beta=1"}) == {"new": 40}
    assert await versions(proxy.url, 40, {"X-User-Id": "alice"}) == {"new": 40}
    assert await versions(proxy.url, 40, {"Cookie": "uid=alice"}) == {"new": 40}
    assert await versions(proxy.url, 40, {"X-Canary": "no", "X-User-Id": "bob"}) == {"old": 40}


async def test_preview_listener_serves_only_the_preview_revision(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, new, _ = ups
    pools = (pool("new", 0, new), pool("old", 100, old))
    await proxy.router.apply(RoutingTable(generation=1, pools=pools))
    assert await versions(proxy.preview_url, 16) == {"503": 16}
    await proxy.router.apply(RoutingTable(generation=2, pools=pools, preview="new"))
    assert await versions(proxy.preview_url, 16) == {"new": 16}
    assert await versions(proxy.url, 16) == {"old": 16}


async def test_refused_backend_is_retried_elsewhere(proxy: Running, ups: list[Upstream]) -> None:
    old, _, _ = ups
    dead = Upstream("dead")
    dead.port = free_port()
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, dead, old),)))
    assert await versions(proxy.url, 200) == {"old": 200}
    stats = await proxy.router.stats()
    # a retry within the revision: each request counts once, the refused connect no error
    assert (stats.revisions["old"].requests, stats.revisions["old"].connection_errors) == (200, 0)


async def test_no_backend_at_all_is_502(proxy: Running) -> None:
    dead = Upstream("dead")
    dead.port = free_port()
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, dead),)))
    assert await versions(proxy.url, 8) == {"502": 8}
    assert (await proxy.router.stats()).revisions["old"].connection_errors == 8


async def test_stale_keepalive_connection_is_retried_for_get(proxy: Running) -> None:
    flaky = await Upstream("flaky", one_shot=True).start()
    try:
        await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, flaky),)))
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(20):
                response = await client.get(f"{proxy.url}/")
                assert (response.status_code, response.text) == (200, "flaky")
            # a POST is not idempotent: it is not sent twice, the client gets 502
            statuses = {
                (await client.post(f"{proxy.url}/", content=b"x")).status_code for _ in range(4)
            }
        assert 502 in statuses
        assert flaky.requests > 20  # some GETs really hit a dead keep-alive connection
    finally:
        await flaky.close()


async def test_streamed_bodies_of_several_mb_arrive_intact(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    chunks = [os.urandom(256 * 1024) for _ in range(16)]  # 4 MiB, sent chunked

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    expected = b"".join(chunks)
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.post(f"{proxy.url}/echo", content=body())
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(expected).hexdigest()
        response = await client.post(f"{proxy.url}/digest", content=body())
        assert response.text == f"{len(expected)} {hashlib.sha256(expected).hexdigest()}"
        response = await client.put(f"{proxy.url}/digest", content=expected)  # Content-Length
        assert response.text == f"{len(expected)} {hashlib.sha256(expected).hexdigest()}"
        big = await client.get(f"{proxy.url}/big", params={"n": 6 * 1024 * 1024})
        assert big.content == b"x" * (6 * 1024 * 1024)


async def test_forwarded_for_head_and_keepalive(proxy: Running, ups: list[Upstream]) -> None:
    old, _, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    async with httpx.AsyncClient(timeout=3) as client:
        echoed = await client.get(f"{proxy.url}/headers", headers={"X-Forwarded-For": "10.1.2.3"})
        assert "X-Forwarded-For: 10.1.2.3, 127.0.0.1" in echoed.text
        head = await client.head(f"{proxy.url}/")
        assert head.status_code == 200 and head.headers["content-length"] == "3"
        after = await client.get(f"{proxy.url}/")  # same connection, after a bodiless HEAD
        assert after.text == "old"
    reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /headers HTTP/1.1\r\nHost: b\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
    )  # pipelined
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"Host: b") < data.rindex(b"\r\n\r\nold")


async def test_backend_closing_ends_or_cuts_the_response(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    port = int(proxy.url.rsplit(":", 1)[1])
    for path in (b"/eof", b"/cut"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
        data = await asyncio.wait_for(reader.read(), 5)  # the proxy closes in both cases
        writer.close()
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"Content-Length: 3\r\n")
    stats = await proxy.router.stats()
    counters = stats.revisions["old"]
    assert counters.requests == 2 and counters.connection_errors == 1  # only the cut one
    assert sum(counters.latency) == 1


async def test_admin_socket_is_private_and_bad_tables_are_refused(
    proxy: Running, ups: list[Upstream], state_dir: Path
) -> None:
    old, new, _ = ups
    mode = stat.S_IMODE((state_dir / "admin.sock").stat().st_mode)
    assert mode == 0o600
    good = RoutingTable(generation=5, pools=(pool("old", 100, old),))
    await proxy.router.apply(good)
    transport = httpx.AsyncHTTPTransport(uds=str(state_dir / "admin.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as admin:
        bad = await admin.put("/table", content=b'{"generation": 9, "pools": [{"weight": -1}]}')
        assert bad.status_code == 400 and "invalid routing table" in bad.text
        garbage = await admin.put("/table", content=b"not json")
        assert garbage.status_code == 400
        older = RoutingTable(generation=4, pools=(pool("new", 100, new),))
        stale = await admin.put("/table", content=older.model_dump_json())
        assert stale.status_code == 409
    with pytest.raises(RouterError):
        await proxy.router.apply(older)
    assert await proxy.router.table() == good
    assert await versions(proxy.url, 8) == {"old": 8}


async def test_table_survives_a_restart(state_dir: Path, ups: list[Upstream]) -> None:
    old, new, _ = ups
    table = RoutingTable(generation=3, pools=(pool("new", 100, new), pool("old", 0, old)))
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    try:
        await router.ensure_running()
        await router.apply(table)
        await router.stop()
        assert not (state_dir / "admin.sock").exists()
        await router.ensure_running()
        assert await router.table() == table
        port = str((await router.health())["listen"]).rsplit(":", 1)[1]
        assert await versions(f"http://127.0.0.1:{port}", 8) == {"new": 8}
    finally:
        await router.stop()
        await router.aclose()


async def test_port_in_use_is_reported_with_the_log(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        router = BuiltinRouter(state_dir, listen=f"127.0.0.1:{port}", preview_listen=None)
        with pytest.raises(RouterError, match="cannot bind"):
            await router.ensure_running()
        await router.aclose()


def _worker_gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


async def _fresh_get(port: int) -> bool:
    """One GET on a new connection; True if a whole 200 answer came back."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nold")


@pytest.mark.serial  # a new worker and 50 answers within 1.5 s
async def test_killed_worker_is_replaced_and_new_connections_are_served(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    health = await proxy.router.health()
    pid = int(str(health["pid"]))
    port = int(proxy.url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 2.0
    results: list[tuple[float, bool]] = []
    killed_at: list[float] = []

    async def client() -> None:
        for _ in range(2000):
            if loop.time() > stop_at:
                return
            started = loop.time()
            results.append((started, await _fresh_get(port)))

    async def killer() -> None:
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        while not _worker_gone(pid):
            await asyncio.sleep(0.001)
        killed_at.append(loop.time())

    await asyncio.gather(*(client() for _ in range(6)), killer())
    after = [ok for started, ok in results if started > killed_at[0]]
    before = [ok for started, ok in results if started <= killed_at[0]]
    assert len(after) > 50 and all(after), f"{after.count(False)} of {len(after)} failed"
    assert before.count(False) <= 6  # only requests in flight at the kill may fail
    health = await proxy.router.health()
    assert int(str(health["pid"])) != pid
    stats = await proxy.router.stats()
    assert stats.worker == health["worker"] and stats.generation == 1  # table reloaded


@pytest.mark.serial  # a table change within a 0.8 s request
async def test_in_flight_count_drains_after_backend_removal(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, new, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    async with httpx.AsyncClient(timeout=5) as client:
        slow = asyncio.create_task(client.get(f"{proxy.url}/sleep", params={"s": "0.8"}))
        for _ in range(100):
            if (await proxy.router.stats()).in_flight.get("old-0") == 1:
                break
            await asyncio.sleep(0.01)
        await proxy.router.apply(RoutingTable(generation=2, pools=(pool("new", 100, new),)))
        stats = await proxy.router.stats()
        assert stats.in_flight == {"old-0": 1, "new-0": 0}
        assert not await proxy.router.drained("old-0")
        assert await versions(proxy.url, 8) == {"new": 8}
        response = await slow
        assert (response.status_code, response.text) == (200, "old")
    assert await proxy.router.drained("old-0")
    assert (await proxy.router.stats()).in_flight == {"new-0": 0}


@pytest.mark.serial  # a request in flight 0.2 s after it was sent
async def test_stop_lets_in_flight_requests_finish(proxy: Running, ups: list[Upstream]) -> None:
    old, _, _ = ups
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),)))
    async with httpx.AsyncClient(timeout=5) as client:
        slow = asyncio.create_task(client.get(f"{proxy.url}/sleep", params={"s": "0.5"}))
        await asyncio.sleep(0.2)
        await proxy.router.stop()
        response = await slow
    assert (response.status_code, response.text) == (200, "old")
    assert proxy.router.pid() is None


@pytest.mark.serial  # a request every 0.25 s against a 1 s idle timeout
async def test_idle_keepalive_clients_are_closed_busy_ones_are_not(
    state_dir: Path, ups: list[Upstream]
) -> None:
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    await router.ensure_running()
    try:
        await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),),
                                        timeouts=Timeouts(idle=1.0)))
        port = int(str((await router.health())["listen"]).rsplit(":", 1)[1])
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        for writer, reader in ((idle_w, idle_r), (busy_w, busy_r)):
            writer.write(request)
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.readexactly(len(b"old"))
        for _ in range(8):  # 2 s: the busy client keeps sending, the idle one does not
            await asyncio.sleep(0.25)
            busy_w.write(request)
            await busy_w.drain()
            assert (await busy_r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await busy_r.readexactly(len(b"old"))
        assert await asyncio.wait_for(idle_r.read(), 2.0) == b""  # closed by the proxy
        assert not busy_r.at_eof()
        for writer in (idle_w, busy_w):
            writer.close()
    finally:
        await router.stop()
        await router.aclose()
