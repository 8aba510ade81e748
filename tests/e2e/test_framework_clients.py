"""Real clients meeting real apps through the router: WebSocket across a rolling deployment,
HTTP/1.0 with and without keep-alive, and `curl` offering HTTP/2 over cleartext.

The apps are the Flask/gunicorn and FastAPI/uvicorn apps of `test_frameworks`, deployed
with the real CLI; the WebSocket clients are the `websockets` package, the others `curl`
and raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e import test_frameworks as frameworks
from tests.e2e.conftest import Service, check
from tests.e2e.test_frameworks import FRAMEWORKS
from turnout.demo.load import Load

pytestmark = pytest.mark.slow
SOCKETS = 8
CHAT_GAP = 0.1
MAX_MESSAGES = 600  # per socket: bounds the chat whatever happens


def write_spec(service: Service, framework: str) -> None:
    """The framework's service, rolling, with a short drain (WebSockets hold theirs to the end)."""
    frameworks.write_spec(service, framework, "rolling", drain_timeout="1500ms")


@dataclass
class Chat:
    """One WebSocket: the versions that answered it and how it ended."""

    versions: list[str] = field(default_factory=list)
    close_code: int | None = None  # from the close frame received, if one was
    abnormal: bool = False  # ended without a close frame, or an answer was missing


async def chat(url: str, stop: asyncio.Event) -> Chat:
    result = Chat()
    try:
        async with connect(url, open_timeout=5, ping_interval=None) as ws:
            for n in range(MAX_MESSAGES):
                if stop.is_set():
                    break
                await ws.send(f"m{n}")
                answer = str(await asyncio.wait_for(ws.recv(), 5))
                version, _, echoed = answer.partition(":")
                if echoed != f"m{n}":
                    result.abnormal = True
                result.versions.append(version)
                await asyncio.sleep(CHAT_GAP)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            result.abnormal = True
        else:
            result.close_code = closed.rcvd.code
    except TimeoutError:
        result.abnormal = True
    return result


async def newcomer(url: str) -> str:
    async with connect(url, open_timeout=5) as ws:
        await ws.send("hi")
        return str(await asyncio.wait_for(ws.recv(), 5)).partition(":")[0]


async def test_websockets_across_a_rolling_deployment(service: Service) -> None:
    write_spec(service, "fastapi-uvicorn")
    check(service.run("deploy", "v1"))
    ws_url = f"ws://127.0.0.1:{service.port}/ws"
    stop = asyncio.Event()
    chats = [asyncio.create_task(chat(ws_url, stop)) for _ in range(SOCKETS)]
    await asyncio.sleep(0.5)
    async with Load(service.url, rate=100, users=50, max_seconds=90) as load:
        code, out, err = await service.arun("deploy", "v2")
        finished = time.monotonic()
        after = await asyncio.gather(*(newcomer(ws_url) for _ in range(10)))
    stop.set()
    ended = await asyncio.wait_for(asyncio.gather(*chats), 30)
    assert code == 0, out + err
    assert load.summary(new_version="v2").clean, load.summary(new_version="v2").problems()
    assert after == ["v2"] * 10  # new sockets reach the new revision
    for result in ended:
        assert not result.abnormal, result
        assert set(result.versions) == {"v1"}, result  # a socket stays on its revision...
        assert result.close_code in (1000, 1001, 1012), result  # ...until drained, then closed cleanly
    assert {s.version for s in load.samples if s.sent >= finished} == {"v2"}


async def http10(port: int, requests: list[bytes]) -> list[tuple[str, bytes, bool]]:
    """Each request on one connection: (head, body, whether the router closed after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
            lines = (line.partition(":") for line in head.split("\r\n")[1:])
            fields = {k.lower(): v.strip() for k, _, v in lines}
            if "content-length" in fields:
                body = await reader.readexactly(int(fields["content-length"]))
                closed = False
            else:  # delimited by the end of the connection
                body = await asyncio.wait_for(reader.read(), 10)
                closed = True
            if fields.get("connection", "").lower() == "close":
                closed = closed or await asyncio.wait_for(reader.read(), 10) == b""
            answers.append((head, body, closed))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
async def test_http10_and_h2c_clients_of_real_apps(service: Service, framework: str) -> None:
    write_spec(service, framework)
    check(service.run("deploy", "v1"))
    keep = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    answers = await http10(service.port, [keep, keep, b"GET / HTTP/1.0\r\n\r\n"])
    for head, body, _ in answers:
        assert head.startswith("HTTP/1.1 200") and b"v1" in body
    assert [a[2] for a in answers] == [False, False, True]  # kept while asked, then closed
    assert all("Connection: keep-alive" in a[0] for a in answers[:2])
    size = 3 * 1024 * 1024
    streamed = f"GET /download?size={size}&seed=4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode()
    (head, body, closed), = await http10(service.port, [streamed])
    assert "Transfer-Encoding" not in head and closed and len(body) == size  # close-delimited
    curl = await asyncio.create_subprocess_exec(
        "curl", "--http1.0", "-sS", "--max-time", "10", f"{service.url}download?size={size}&seed=4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await curl.communicate()
    assert curl.returncode == 0 and out == body, err
    h2c = await asyncio.create_subprocess_exec(
        "curl", "--http2", "-sS", "-i", "--max-time", "10", service.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await h2c.communicate()
    assert h2c.returncode == 0 and out.startswith(b"HTTP/1.1 200") and b"v1" in out, (out, err)


async def slow_upload(port: int, size: int, pieces: int, gap: float) -> int:
    """POST `size` bytes in `pieces` writes `gap` seconds apart; the status answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        writer.write(head % size)
        piece = size // pieces
        for _ in range(pieces):
            writer.write(b"u" * piece)
            await writer.drain()
            await asyncio.sleep(gap)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        return int(answer.split(b" ", 2)[1])
    finally:
        writer.close()


async def quick_answers(url: str, seconds: float) -> list[float]:
    """How long each of a normal client's GETs took, one every 100 ms for `seconds`."""
    took = []
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            response = await client.get(url)
            assert response.status_code == 200
            took.append(time.monotonic() - started)
            await asyncio.sleep(0.1)
    return took


# Buffered: each quick answer under 0.5 s, which a busy CPU breaks.
@pytest.mark.parametrize("buffered", [pytest.param(True, marks=pytest.mark.serial), False])
async def test_buffered_bodies_keep_slow_uploads_off_a_sync_apps_few_workers(
    service: Service, buffered: bool
) -> None:
    command = [*FRAMEWORKS["flask-gunicorn"]]
    command[command.index("--workers") + 1] = "2"
    write_spec(service, "flask-gunicorn")
    spec = yaml.safe_load(service.spec.read_text())
    spec["run"]["command"] = command
    spec["instances"] = 1
    spec["routing"]["buffer_requests"] = "8MiB" if buffered else False
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    check(service.run("deploy", "v1"))
    uploads = [asyncio.create_task(slow_upload(service.port, 1_000_000, 20, 0.15)) for _ in range(6)]
    await asyncio.sleep(0.3)
    took = await quick_answers(service.url, 2.0)
    assert await asyncio.gather(*uploads) == [200] * 6
    if buffered:  # the uploads reached the app only once whole: its workers stayed free
        assert max(took) < 0.5, took
    else:  # streamed, they held both workers: what buffering is for
        assert max(took) > 1.0, took
