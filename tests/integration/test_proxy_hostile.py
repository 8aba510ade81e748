"""Hostile clients against a running builtin router, with normal clients beside them.

All at once, against one router process: 2,000 idle connections, oversized and endless
headers, heads trickled a byte at a time, malformed request lines, clients that vanish in
the middle of a body, and requests to an instance that never answers. Each hostile client
must get its status code or a cut connection; the worker's memory must stay within 10 MB of
its baseline; normal clients (their own process, 200 requests a second) must fail nothing
and keep their p99 under 20 ms; and every answer the router made must be in its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.raw_http import Reply, flood, read_reply
from tests.integration.test_proxy import state_dir

from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, Timeouts

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # p99 under 20 ms; cuts within 1.8-3.5 s
__all__ = ["state_dir"]
ROOT = Path(__file__).resolve().parents[2]
TIMEOUTS = Timeouts(header=2.0, idle=4.0, body=2.0, response=2.0, send=2.0)
IDLE_CONNECTIONS = 2000
MEMORY_BUDGET = 10 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def fast_upstream() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    with proc.stdout:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def hung_backend() -> Iterator[str]:
    """An instance that never answers: the kernel accepts connections that nobody reads."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
async def router(
    state_dir: Path, fast_upstream: str, hung_backend: str
) -> AsyncIterator[tuple[BuiltinRouter, int]]:
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    await router.ensure_running()
    app = Backend(id="app-0", address=fast_upstream)
    hung = Backend(id="hung-0", address=hung_backend)
    pools = (Pool(revision="app", version="app", weight=100, backends=(app,)),
             Pool(revision="hung", version="hung", weight=0, backends=(hung,)))
    rules = (MatchRule(revision="hung", header="X-Hung", values=("yes",)),)
    await router.apply(RoutingTable(generation=1, pools=pools, rules=rules, timeouts=TIMEOUTS))
    port = int(str((await router.health())["listen"]).rsplit(":", 1)[1])
    try:
        yield router, port
    finally:
        await router.stop()
        await router.aclose()


async def steady(port: int, seconds: float) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.steady_load", f"http://127.0.0.1:{port}/", "200",
        str(seconds), stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    result: dict[str, object] = json.loads(out)
    return result


# --- the hostile clients; each returns what every one of its connections got


async def _send_and_read(port: int, data: bytes, wait: float) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await read_reply(reader, wait=wait)
    finally:
        writer.close()


async def idle_connections(port: int) -> list[Reply]:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(IDLE_CONNECTIONS // 100):  # 100 at a time, 50 ms apart
        held += await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(100)))
        await asyncio.sleep(0.05)
    replies = await asyncio.gather(*(read_reply(r, wait=TIMEOUTS.header + 3) for r, _ in held))
    for _, writer in held:
        writer.close()
    return list(replies)


async def oversized_heads(port: int) -> list[Reply]:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"b" * 64 * 1024)
    return list(await asyncio.gather(*(_send_and_read(port, head, 3.0) for _ in range(20))))


async def endless_heads(port: int) -> list[Reply]:
    async def one() -> Reply:  # at most 4 MiB; the router cuts in after 32 KiB
        return (await flood(port, b"GET / HTTP/1.1\r\nX-Endless: ", most=4 * 2**20))[0]

    return list(await asyncio.gather(*(one() for _ in range(5))))


async def trickled_heads(port: int) -> list[tuple[Reply, float]]:
    async def one() -> tuple[Reply, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nX-Slow: ")
        answer = asyncio.create_task(read_reply(reader, wait=10.0))
        for _ in range(20):  # a byte every 0.5 s would last 10 s
            await asyncio.wait({answer}, timeout=0.5)
            if answer.done():
                break
            try:
                writer.write(b"s")
                await writer.drain()
            except ConnectionError:
                break
        reply = await answer
        writer.close()
        return reply, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(30))))


MALFORMED = [
    b"GARBAGE\r\n\r\n", b"GET / HTTP/7.1\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\r\n\r\n",  # a TLS hello on the plain port
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b" / HTTP/1.1\r\n\r\n",
]


async def malformed_requests(port: int) -> list[Reply]:
    rng = random.Random(6)
    requests = [rng.choice(MALFORMED) for _ in range(200)]
    return list(await asyncio.gather(*(_send_and_read(port, r, 3.0) for r in requests)))


async def vanishing_uploads(port: int) -> int:
    async def one() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"v" * 20_000)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # gone without a word, mid-body

    await asyncio.gather(*(one() for _ in range(50)))
    return 50


async def hung_requests(port: int) -> list[tuple[Reply, float]]:
    async def one() -> tuple[Reply, float]:
        started = time.monotonic()
        reply = await _send_and_read(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Hung: yes\r\n\r\n", 6.0)
        return reply, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(30))))


async def broken_chunks(port: int) -> list[Reply]:
    broken = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\nzz\r\n")
    return list(await asyncio.gather(*(_send_and_read(port, broken, 3.0) for _ in range(20))))


async def trailer_floods(port: int) -> list[Reply]:
    async def one() -> Reply:  # at most 4 MiB; cut after 32 KiB
        prefix = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\nX-Trailer: ")
        return (await flood(port, prefix, most=4 * 2**20))[0]

    return list(await asyncio.gather(*(one() for _ in range(5))))


async def hung_uploads(port: int) -> list[tuple[Reply, float]]:
    """Bodies for an instance that never reads them: 504 once it has been silent too long."""
    async def one() -> tuple[Reply, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        size = 32 * 1024 * 1024
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Hung: yes\r\nContent-Length: %d\r\n\r\n" % size)
        answer = asyncio.create_task(read_reply(reader, wait=8.0))
        with contextlib.suppress(ConnectionError, TimeoutError):
            for _ in range(size // 65536):
                if answer.done():
                    break
                writer.write(b"u" * 65536)
                await asyncio.wait_for(writer.drain(), 8)
        reply = await answer
        writer.close()
        return reply, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(5))))


async def non_readers(port: int) -> list[Reply]:
    """Clients that ask for 16 MiB and never read it: cut after the send timeout."""
    async def one() -> Reply:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.pause_reading()
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(TIMEOUTS.send + 2.0)
        writer.transport.resume_reading()
        reply = await read_reply(reader, wait=3.0)
        writer.close()
        return reply

    return list(await asyncio.gather(*(one() for _ in range(5))))


async def watch_memory(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak.append(rss(pid))
        await asyncio.sleep(0.1)


async def test_hostile_clients_get_answers_or_cuts_while_normal_clients_are_served(
    router: tuple[BuiltinRouter, int],
) -> None:
    admin, port = router
    worker = int(str((await admin.health())["pid"]))
    # warm up every path once, then take the baseline
    warm: list[Callable[[int], Awaitable[object]]] = [oversized_heads, malformed_requests, vanishing_uploads]
    for kind in warm:
        await kind(port)
    await steady(port, 2.0)
    await asyncio.sleep(0.5)
    baseline = rss(worker)
    before = await admin.stats()

    stop, samples = asyncio.Event(), [baseline]
    watcher = asyncio.create_task(watch_memory(worker, stop, samples))
    normal = asyncio.create_task(steady(port, 9.0))
    await asyncio.sleep(0.5)
    answers = await asyncio.gather(
        idle_connections(port), oversized_heads(port), endless_heads(port), trickled_heads(port),
        malformed_requests(port), vanishing_uploads(port), hung_requests(port), broken_chunks(port),
        trailer_floods(port), hung_uploads(port), non_readers(port),
    )
    idle, big, endless, trickled, bad, vanished, hung, chunks, trailers, uploads, unread = answers
    result = await normal
    stop.set()
    await watcher

    grew = (max(samples) - baseline) / 2**20
    print(f"normal clients: {result}; worker RSS {baseline / 2**20:.1f} MiB, peak +{grew:.1f} MiB")
    assert result["failed"] == 0 and result["resent"] == 0, result
    assert float(result["p99_ms"]) < 20.0, result  # type: ignore[arg-type]
    assert max(samples) - baseline < MEMORY_BUDGET, (baseline, max(samples))

    assert all(r.status == 408 and r.closed for r in idle), {(r.status, r.closed) for r in idle}
    assert all(r.status == 431 and r.closed for r in big)
    assert all(r.status in (431, None) and r.closed for r in endless)
    assert all(r.status == 408 and r.closed and 1.8 <= t <= 3.5 for r, t in trickled), [
        (r.status, round(t, 2)) for r, t in trickled]
    assert all(r.status == 400 and r.closed for r in bad)
    assert all(r.status == 504 and 1.8 <= t <= 3.5 for r, t in hung), [
        (r.status, round(t, 2)) for r, t in hung]
    assert all(r.status == 400 and r.closed for r in chunks)
    assert all(r.status in (431, None) and r.closed for r in trailers)
    assert all((r.status == 504 or r.closed) and t <= 8.0 for r, t in uploads), [
        (r.status, r.closed, round(t, 2)) for r, t in uploads]
    assert all(r.closed and len(r.data) < 16 * 2**20 for r in unread)  # cut, not sent whole

    after = await admin.stats()
    made = after.unrouted.minus(before.unrouted).router_responses
    assert made.get("408", 0) == IDLE_CONNECTIONS + len(trickled)
    assert made.get("431", 0) == len(big) + len(endless)  # an endless writer may see a reset, not the 431
    assert made.get("400", 0) == len(bad)
    assert after.revisions["hung"].router_responses.get("504") == len(hung) + len(uploads)
    app = after.revisions["app"].minus(before.revisions["app"]).router_responses
    assert app.get("400") == len(chunks) and app.get("431") == len(trailers)
    assert app.get("499") == vanished + len(unread)  # gone, or cut for not reading: the clients' doing
    deadline = time.monotonic() + 5
    while (stats := await admin.stats()).in_flight.get("app-0") or stats.in_flight.get("hung-0"):
        assert time.monotonic() < deadline, stats.in_flight
        await asyncio.sleep(0.1)
    assert await admin.healthy() and int(str((await admin.health())["pid"])) == worker  # never crashed
