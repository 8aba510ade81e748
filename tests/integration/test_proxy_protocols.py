"""The builtin router with real clients: HTTP/1.0, upgrades (WebSocket, h2c), forwarding headers,
request buffering and the preview listener. The proxy runs as its own process; upstreams are
small servers in the test process (see `test_proxy`), WebSocket ones from the `websockets` package.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from tests.integration.raw_http import exchange, read_reply
from tests.integration.test_proxy import (  # fixtures are used by name
    Running,
    Upstream,
    free_port,
    pool,
    proxy,
    state_dir,
    ups,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from turnout.routers.table import Backend, Pool, RoutingTable, Timeouts

__all__ = ["proxy", "state_dir", "ups"]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- h2c


async def test_curl_http2_offer_is_answered_as_http11(proxy: Running, ups: list[Upstream]) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    curl = await asyncio.create_subprocess_exec(
        "curl", "--http2", "-sS", "-i", "--max-time", "5", f"{proxy.url}/headers",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await curl.communicate()
    assert curl.returncode == 0, err
    text = out.decode()
    assert text.startswith("HTTP/1.1 200"), text
    sent = text.split("\r\n\r\n", 1)[1].lower()  # the headers the instance received
    assert "upgrade" not in sent and "http2-settings" not in sent


async def test_h2c_offer_then_a_pipelined_request_both_answered(proxy: Running, ups: list[Upstream]) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    offer = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
             b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    reply = await exchange(port_of(proxy.url), offer + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait=1.0)
    assert reply.data.count(b"HTTP/1.1 200 OK") == 2, reply.data
    assert b"101" not in reply.data.split(b"\r\n", 1)[0]


# --- HTTP/1.0


async def test_http10_without_keepalive_is_closed_after_the_answer(
    proxy: Running, ups: list[Upstream]
) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    reply = await exchange(port_of(proxy.url), b"GET / HTTP/1.0\r\n\r\n", wait=3.0)
    assert reply.closed and reply.status == 200
    assert reply.header("Connection") == "close"
    assert reply.body == b"old"


async def test_http10_keepalive_is_announced_and_kept(proxy: Running, ups: list[Upstream]) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    try:
        for path in (b"/", b"/headers", b"/"):
            writer.write(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % path)
            reply = await read_reply(reader, wait=3.0, until_close=False)
            assert not reply.closed and reply.status == 200
            assert reply.header("Connection") == "keep-alive"
            assert reply.header("Content-Length") == str(len(reply.body))
            if path == b"/headers":  # no Host sent: the router names its listener
                assert f"Host: {proxy.url.removeprefix('http://')}" in reply.body.decode()
        writer.write(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert b"Connection: keep-alive" in head
        writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await read_reply(reader, wait=3.0, until_close=False)).body == b"old"
    finally:
        writer.close()


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_streamed_answer_to_http10_is_close_delimited_never_chunked(
    proxy: Running, ups: list[Upstream], keep_alive: bool
) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    extra = b"Connection: keep-alive\r\n" if keep_alive else b""
    size = 4 * 65536
    reply = await exchange(port_of(proxy.url), b"GET /big?n=%d HTTP/1.0\r\n%s\r\n" % (size, extra), wait=5.0)
    assert reply.closed and reply.status == 200
    assert reply.header("Transfer-Encoding") is None and reply.header("Connection") == "close"
    assert reply.body == b"x" * size


async def test_curl_http10_gets_the_whole_streamed_body(proxy: Running, ups: list[Upstream]) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    curl = await asyncio.create_subprocess_exec(
        "curl", "--http1.0", "-sS", "--max-time", "5", f"{proxy.url}/big?n=655360",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await curl.communicate()
    assert curl.returncode == 0, err
    assert out == b"x" * 655360


@pytest.mark.serial  # events 0.2-0.35 s apart, p99 under 0.1 s
async def test_server_sent_events_arrive_as_sent_and_count_their_start_as_latency(
    proxy: Running, ups: list[Upstream]
) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    started = time.monotonic()
    writer.write(b"GET /drip?n=5&s=0.25 HTTP/1.1\r\nHost: x\r\n\r\n")
    arrivals = []
    buffer = b""
    while len(arrivals) < 5:
        buffer += await asyncio.wait_for(reader.read(4096), 3)
        while b"\n\n" in buffer:
            _, buffer = buffer.split(b"\n\n", 1)
            arrivals.append(time.monotonic() - started)
    writer.close()
    assert all(0.2 <= b - a <= 0.35 for a, b in itertools.pairwise(arrivals)), arrivals  # progressively
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.requests == 1 and counters.quantile(0.99) <= 0.1  # not the 1 s the stream lasted


# --- forwarding headers


async def test_forwarded_proto_and_host(proxy: Running, ups: list[Upstream]) -> None:
    pools = (pool("old", 100, ups[0]),)
    await proxy.router.apply(RoutingTable(generation=1, pools=pools))
    port = port_of(proxy.url)
    plain = await exchange(port, b"GET /headers HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    assert b"X-Forwarded-Proto: http\n" in plain.body and b"X-Forwarded-Host: shop.test\n" in plain.body
    behind_tls = (b"GET /headers HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-Proto: https\r\n"
                  b"X-Forwarded-Host: www.shop.test\r\nConnection: close\r\n\r\n")
    kept = await exchange(port, behind_tls)
    assert kept.body.count(b"X-Forwarded-Proto") == 1 and b"X-Forwarded-Proto: https\n" in kept.body
    assert b"X-Forwarded-Host: www.shop.test\n" in kept.body
    await proxy.router.apply(RoutingTable(generation=2, pools=pools, trust_forwarded=False))
    replaced = await exchange(port, behind_tls)
    assert b"X-Forwarded-Proto: http\n" in replaced.body and b"https" not in replaced.body
    assert b"X-Forwarded-Host: shop.test\n" in replaced.body


# --- buffering


async def test_buffered_upload_reaches_the_instance_only_when_whole(
    proxy: Running, ups: list[Upstream]
) -> None:
    old = ups[0]
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),),
                                          buffer_requests=64 * 1024))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    body = b"y" * 50_000
    writer.write(b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(5):  # a slow upload: the instance's connections stay free meanwhile
        writer.write(body[i * 10_000:(i + 1) * 10_000])
        await writer.drain()
        await asyncio.sleep(0.2)
        if i < 4:
            assert old.requests == 0 and not old.conns
    reply = await read_reply(reader, wait=3.0, until_close=False)
    assert reply.status == 200 and reply.body.startswith(b"50000 ")
    writer.close()
    too_big = b"y" * 70_000
    post = b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(too_big), too_big)
    reply = await exchange(port_of(proxy.url), post)
    assert reply.status == 413
    chunked = b"POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (10_000, b"z" * 10_000) for _ in range(7)) + b"0\r\n\r\n"
    assert (await exchange(port_of(proxy.url), chunked)).status == 413
    stats = await proxy.router.stats()
    assert stats.revisions["old"].router_responses == {"413": 2}
    assert stats.revisions["old"].requests == 3


# --- preview


async def test_preview_never_falls_back_to_another_pool(proxy: Running, ups: list[Upstream]) -> None:
    dead = Upstream("green")
    dead.port = free_port()  # nothing listens: the green fleet refuses connections
    pools = (pool("green", 0, dead), pool("blue", 100, ups[0]))
    await proxy.router.apply(RoutingTable(generation=1, pools=pools, preview="green"))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await exchange(port_of(proxy.preview_url), request)
    assert reply.status == 502 and b"blue" not in reply.data
    stats = await proxy.router.stats()
    assert stats.revisions["green"].connection_errors == 1
    assert stats.revisions["green"].router_responses == {"502": 1}


# --- WebSocket


class EchoServer:
    """A WebSocket echo server answering `<name>:<message>`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: Server | None = None
        self.open = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.open += 1
        try:
            async for message in ws:
                await ws.send(f"{self.name}:{message}")
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1

    async def __aenter__(self) -> EchoServer:
        self.server = await serve(self.handler, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"{host}:{port}"

    def pool(self, weight: int) -> Pool:
        return Pool(revision=self.name, version=self.name, weight=weight,
                    backends=(Backend(id=f"{self.name}-0", address=self.address),))


@pytest.fixture
async def echoes() -> AsyncIterator[tuple[EchoServer, EchoServer]]:
    async with EchoServer("v1") as v1, EchoServer("v2") as v2:
        yield v1, v2


async def test_websocket_echo_is_tunnelled_counted_and_drained(
    proxy: Running, echoes: tuple[EchoServer, EchoServer]
) -> None:
    v1, v2 = echoes
    ws_url = proxy.url.replace("http://", "ws://") + "/chat"
    await proxy.router.apply(RoutingTable(generation=1, pools=(v1.pool(100),)))
    async with connect(ws_url) as old:
        await old.send("hello")
        assert await old.recv() == "v1:hello"
        await old.send("x" * 200_000)  # larger than one read: flow control both ways
        assert await old.recv() == "v1:" + "x" * 200_000
        assert not await proxy.router.drained("v1-0")  # an open socket is in flight
        await proxy.router.apply(RoutingTable(generation=2, pools=(v2.pool(100), v1.pool(0))))
        async with connect(ws_url) as new:
            await new.send("hi")
            assert await new.recv() == "v2:hi"
        await old.send("still here")
        assert await old.recv() == "v1:still here"  # an old socket stays on its revision
        assert not await proxy.router.drained("v1-0")
    deadline = time.monotonic() + 3
    while not await proxy.router.drained("v1-0"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    stats = await proxy.router.stats()
    assert stats.revisions["v1"].requests == 1 and stats.revisions["v2"].requests == 1
    assert stats.revisions["v1"].responses_5xx == 0 and stats.revisions["v1"].connection_errors == 0


async def test_websocket_closed_by_the_instance_reaches_the_client_cleanly(
    proxy: Running, echoes: tuple[EchoServer, EchoServer]
) -> None:
    v1, _ = echoes
    await proxy.router.apply(RoutingTable(generation=1, pools=(v1.pool(100),)))
    async with connect(proxy.url.replace("http://", "ws://")) as ws:
        await ws.send("a")
        await ws.recv()
        assert v1.server is not None
        v1.server.close()  # a shutting-down instance closes its sockets with 1001
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


@pytest.mark.serial  # closed within 0.9-2.5 s
async def test_silent_tunnel_is_closed_after_the_tunnel_timeout(
    proxy: Running, echoes: tuple[EchoServer, EchoServer]
) -> None:
    v1, _ = echoes
    await proxy.router.apply(RoutingTable(generation=1, pools=(v1.pool(100),),
                                          timeouts=Timeouts(tunnel=1.0)))
    async with connect(proxy.url.replace("http://", "ws://"), ping_interval=None) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert 0.9 <= time.monotonic() - started <= 2.5
    assert await proxy.router.drained("v1-0")


async def test_upgrade_declined_by_the_instance_is_an_ordinary_answer(
    proxy: Running, ups: list[Upstream]
) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(proxy.url.replace("http://", "ws://")):
            pass
    assert refused.value.response.status_code == 200  # a plain HTTP server: no 101
    stats = await proxy.router.stats()
    assert stats.revisions["old"].requests == 1 and stats.revisions["old"].connection_errors == 0
