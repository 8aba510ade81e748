"""The builtin router's limits and deadlines, and the counting of every answer it makes itself.

Each test sets the limits it needs in the table (as the engine does from `routing.limits`
and `routing.timeouts`), sends exactly the bytes it means over a raw socket, and checks the
status (or the cut) and the counters the admin API reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.integration.raw_http import exchange, flood, read_reply
from tests.integration.test_proxy import (  # fixtures are used by name
    Running,
    Upstream,
    pool,
    proxy,
    state_dir,
    ups,
)

from turnout.routers.base import Counters
from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, Limits, Pool, RoutingTable, Timeouts

__all__ = ["proxy", "state_dir", "ups"]
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def apply(proxy: Running, old: Upstream, **settings: object) -> None:
    await proxy.router.apply(RoutingTable(generation=1, pools=(pool("old", 100, old),), **settings))  # type: ignore[arg-type]


async def test_oversized_head_and_too_many_headers_get_431(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], limits=Limits(max_header_size=8192, max_headers=20))
    port = port_of(proxy.url)
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * 9000)
    assert (await exchange(port, big)).status == 431
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(25)) + b"\r\n"
    assert (await exchange(port, many)).status == 431
    fits = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\nConnection: close\r\n\r\n" % (b"a" * 7000)
    assert (await exchange(port, fits)).status == 200
    stats = await proxy.router.stats()
    assert stats.unrouted.router_responses == {"431": 2} and stats.unrouted.requests == 2


async def test_a_head_and_a_large_body_in_one_write_are_not_mistaken_for_a_big_head(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0], limits=Limits(max_header_size=4096))
    body = b"b" * 100_000
    request = b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        len(body), body)
    reply = await exchange(port_of(proxy.url), request, wait=5.0)
    assert reply.status == 200 and reply.body.startswith(b"100000 ")


async def test_endless_header_is_cut_at_the_limit_not_buffered(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0])
    # up to 32 MiB, bounded; the router cuts in well before
    reply, sent = await flood(port_of(proxy.url), b"GET / HTTP/1.1\r\nX-Endless: ", most=32 * 2**20, wait=5.0)
    assert reply.status in (431, None) and sent < 8 * 1024 * 1024
    assert (await proxy.router.stats()).unrouted.router_responses == {"431": 1}


@pytest.mark.serial  # cut within 0.9-2 s
async def test_trickled_head_is_cut_at_the_header_deadline(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(header=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    started = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nX-Slow: ")
    answer = asyncio.create_task(read_reply(reader, wait=8.0))
    for _ in range(30):  # a byte every 0.2 s would go on for 6 s
        await asyncio.wait({answer}, timeout=0.2)
        if answer.done():
            break
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            break
    reply = await answer
    elapsed = time.monotonic() - started
    writer.close()
    assert reply.status == 408 and reply.closed
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert (await proxy.router.stats()).unrouted.router_responses == {"408": 1}


@pytest.mark.serial  # 408 within 0.9-2.5 s
async def test_stalled_body_gets_408_and_is_counted_for_its_revision(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(body=1.0))
    started = time.monotonic()
    stalled = b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
    reply = await exchange(port_of(proxy.url), stalled, wait=4.0)
    assert reply.status == 408 and reply.closed
    assert 0.9 <= time.monotonic() - started <= 2.5
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.router_responses == {"408": 1} and counters.error_rate == 0.0


@pytest.mark.serial  # 504 within 0.9-2.5 s
async def test_an_instance_that_never_answers_gets_504_counted(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(response=1.0))
    started = time.monotonic()
    reply = await exchange(port_of(proxy.url), b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n", wait=4.0,
                           until_close=False)
    assert reply.status == 504
    assert 0.9 <= time.monotonic() - started <= 2.5
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.router_responses == {"504": 1} and counters.connection_errors == 1
    assert counters.error_rate == 1.0
    assert await proxy.router.drained("old-0")  # the hung connection was let go


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An address whose accept queue is full: connecting to it hangs (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    time.sleep(0.1)
    yield f"127.0.0.1:{address[1]}"
    for sock in [*fillers, listener]:
        sock.close()


@pytest.mark.serial  # 504 within 2 s of a 0.5 s connect timeout
async def test_connect_timeout_gives_504(proxy: Running, blackhole: str) -> None:
    table = RoutingTable(generation=1, timeouts=Timeouts(connect=0.5),
                         pools=(Pool(revision="old", version="old", weight=100,
                                     backends=(Backend(id="old-0", address=blackhole),)),))
    await proxy.router.apply(table)
    started = time.monotonic()
    reply = await exchange(port_of(proxy.url), GET, wait=4.0, until_close=False)
    assert reply.status == 504 and time.monotonic() - started < 2.0
    assert (await proxy.router.stats()).revisions["old"].router_responses == {"504": 1}


async def test_connections_over_the_limit_are_refused_and_the_rest_served(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0], limits=Limits(max_connections=5))
    port = port_of(proxy.url)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    await asyncio.sleep(0.1)
    refused = await exchange(port, GET, wait=2.0)
    assert refused.status == 503 and refused.closed
    reader, writer = held[0]
    writer.write(GET)
    assert (await read_reply(reader, wait=2.0, until_close=False)).status == 200
    writer.close()
    await asyncio.sleep(0.2)
    assert (await exchange(port, GET, wait=2.0, until_close=False)).status == 200
    for _, w in held[1:]:
        w.close()
    assert (await proxy.router.stats()).unrouted.router_responses == {"503": 1}


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
])
async def test_malformed_requests_get_400_counted(
    proxy: Running, ups: list[Upstream], request_bytes: bytes
) -> None:
    await apply(proxy, ups[0])
    reply = await exchange(port_of(proxy.url), request_bytes)
    assert reply.status == 400 and reply.closed
    assert (await proxy.router.stats()).unrouted.router_responses == {"400": 1}


async def test_connect_method_gets_405(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0])
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    reply = await exchange(port_of(proxy.url), connect)
    assert reply.status == 405 and reply.closed


async def test_counters_never_go_down_across_worker_restarts(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0])
    port = port_of(proxy.url)
    for _ in range(20):
        await exchange(port, GET, wait=2.0, until_close=False)
    await exchange(port, b"NOT HTTP\r\n\r\n")
    before = await proxy.router.stats()
    for _ in range(3):
        worker = int(str((await proxy.router.health())["pid"]))
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if int(str((await proxy.router.health())["pid"])) != worker:
                    break
            except Exception:  # the replacement is starting
                pass
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        after = await proxy.router.stats()
        for name in ("old", "unrouted"):
            a = after.unrouted if name == "unrouted" else after.revisions[name]
            b = before.unrouted if name == "unrouted" else before.revisions[name]
            assert _grew(a, b), (name, a, b)
            assert a.minus(b).requests == 0
        before = after


def _grew(after: Counters, before: Counters) -> bool:
    return (after.requests >= before.requests and after.responses_5xx >= before.responses_5xx
            and after.connection_errors >= before.connection_errors
            and all(a >= b for a, b in zip(after.latency, before.latency, strict=True))
            and all(after.router_responses.get(k, 0) >= v for k, v in before.router_responses.items()))


# --- a deliberate exception in the routing path, in a real worker process


@pytest.fixture
async def faulty(state_dir: Path) -> AsyncIterator[tuple[BuiltinRouter, int]]:
    """A proxy worker whose routing raises for the user key `boom` (see faulty_worker.py)."""
    port_file = state_dir / "port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.faulty_worker", str(state_dir), str(port_file),
    )
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    try:
        deadline = time.monotonic() + 10
        while not (port_file.exists() and await router.healthy()):
            assert proc.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        yield router, int(port_file.read_text())
    finally:
        proc.terminate()
        await proc.wait()
        await router.aclose()


async def test_an_exception_in_routing_is_a_counted_502(
    faulty: tuple[BuiltinRouter, int], ups: list[Upstream]
) -> None:
    router, port = faulty
    await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups[0]),)))
    alice = b"GET / HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\r\n"
    ok = await exchange(port, alice, wait=2.0, until_close=False)
    assert ok.status == 200
    reply = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-User-Id: boom\r\n\r\n", wait=2.0)
    assert reply.status == 502 and reply.closed
    stats = await router.stats()
    assert stats.unrouted.router_responses == {"502": 1} and stats.unrouted.connection_errors == 1
    assert stats.revisions["old"].requests == 1


# --- found in review: every way an exchange could hang or be counted wrong


@pytest.mark.serial  # refused within 1 s
async def test_a_malformed_chunk_in_a_body_refuses_that_request(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(body=1.0, response=1.0))
    broken = (b"POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\nzz\r\n")
    started = time.monotonic()
    reply = await exchange(port_of(proxy.url), broken, wait=4.0)
    assert reply.status == 400 and reply.closed and time.monotonic() - started < 1.0
    stats = await proxy.router.stats()
    assert stats.revisions["old"].router_responses == {"400": 1}
    assert stats.revisions["old"].error_rate == 0.0  # the client's fault, not the instance's
    assert stats.in_flight["old-0"] == 0


async def test_endless_trailers_are_cut_at_the_head_limit(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], limits=Limits(max_header_size=8192))
    prefix = (b"POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\nX-Trailer: ")
    reply, sent = await flood(port_of(proxy.url), prefix, most=16 * 2**20)  # cut at 8 KiB
    assert reply.status in (431, None) and reply.closed and sent < 4 * 1024 * 1024
    assert (await proxy.router.stats()).revisions["old"].router_responses == {"431": 1}


async def test_an_instance_that_never_reads_the_body_gets_504(proxy: Running, hung: str) -> None:
    table = RoutingTable(generation=1, timeouts=Timeouts(response=1.0),
                         pools=(Pool(revision="old", version="old", weight=100,
                                     backends=(Backend(id="old-0", address=hung),)),))
    await proxy.router.apply(table)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    size = 64 * 1024 * 1024
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    answer = asyncio.create_task(read_reply(reader, wait=8.0))
    try:
        for _ in range(size // 65536):  # the router stops reading once the instance stops
            if answer.done():
                break
            writer.write(b"p" * 65536)
            await asyncio.wait_for(writer.drain(), 8)
    except (ConnectionError, TimeoutError):
        pass
    reply = await answer
    writer.close()
    assert reply.status == 504 or reply.closed
    stats = await proxy.router.stats()
    assert stats.revisions["old"].router_responses == {"504": 1} and stats.in_flight["old-0"] == 0


@pytest.fixture
def hung() -> Iterator[str]:
    """An instance that accepts connections (the kernel does) and never reads them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_client_that_never_reads_is_cut_after_the_send_timeout(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(send=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    writer.transport.pause_reading()  # never reads: the answer piles up
    writer.write(b"GET /big?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    for held in (1, 0):  # the answer starts, then the stalled client is cut
        while (await proxy.router.stats()).in_flight.get("old-0") != held:
            assert time.monotonic() - started < 8, f"in flight never became {held}"
            await asyncio.sleep(0.1)
    assert time.monotonic() - started >= 0.9
    writer.transport.resume_reading()
    got = await read_reply(reader, wait=3.0)
    writer.close()
    assert got.closed and len(got.data) < 67108864
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.router_responses == {"499": 1} and counters.error_rate == 0.0


async def test_a_deadline_during_a_connect_is_counted_once(proxy: Running, blackhole: str) -> None:
    table = RoutingTable(generation=1, timeouts=Timeouts(connect=3.0, body=0.5),
                         pools=(Pool(revision="old", version="old", weight=100,
                                     backends=(Backend(id="old-0", address=blackhole),)),))
    await proxy.router.apply(table)
    stalled = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12"
    reply = await exchange(port_of(proxy.url), stalled, wait=5.0)
    assert reply.status == 408
    await asyncio.sleep(3.5)  # past the connect timeout: the abandoned connect adds nothing
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.router_responses == {"408": 1} and counters.connection_errors == 0
    assert counters.requests == 1


async def test_a_buffered_request_that_stalls_is_counted(proxy: Running, ups: list[Upstream]) -> None:
    await apply(proxy, ups[0], buffer_requests=1024 * 1024, timeouts=Timeouts(body=0.5))
    stalled = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12"
    reply = await exchange(port_of(proxy.url), stalled, wait=3.0)
    assert reply.status == 408
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.requests == 1 and counters.router_responses == {"408": 1}


@pytest.mark.serial  # counted within 0.3 s of the client leaving
async def test_a_client_that_gives_up_counts_as_499_with_its_wait(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0])
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    writer.write(b"GET /sleep?s=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.6)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    counters = (await proxy.router.stats()).revisions["old"]
    assert counters.router_responses == {"499": 1} and counters.error_rate == 0.0
    assert counters.quantile(0.99) >= 0.5  # the wait shows in the latency
    assert (await proxy.router.stats()).in_flight["old-0"] == 0


@pytest.mark.serial  # 408 within 1.6 s
async def test_a_new_connections_first_head_is_due_within_the_header_timeout(
    proxy: Running, ups: list[Upstream]
) -> None:
    await apply(proxy, ups[0], timeouts=Timeouts(header=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    started = time.monotonic()
    await asyncio.sleep(0.7)
    writer.write(b"GET / HTTP/1.1\r\n")  # begun late: the clock ran from the connection
    reply = await read_reply(reader, wait=3.0)
    writer.close()
    assert reply.status == 408 and time.monotonic() - started < 1.6


def test_a_bad_listen_address_is_a_clear_error(tmp_path: Path) -> None:
    router = tmp_path / "router"
    argv = [sys.executable, "-m", "turnout", "proxy", "--listen", "nope", "--state-dir", str(router)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--listen: expected host:port" in result.stderr and not (tmp_path / "router").exists()
