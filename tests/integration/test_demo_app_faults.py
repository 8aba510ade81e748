"""The demo app's faults as real processes on 127.0.0.1: refuse, hang, crash after N, the same behind a
flag, and bad settings."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


async def test_refuse_passes_one_health_check_then_refuses_every_connection() -> None:
    env = {**os.environ, "TURNOUT_VERSION": "v2", "DEMO_FAIL": "refuse"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        match = LISTENING.search(line)
        assert match, line
        url = f"http://127.0.0.1:{int(match.group(1))}"
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            health = await client.get(url + "/healthz")
            assert health.status_code == 200 and health.headers["connection"] == "close"
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert b"refusing connections" in line
            for path in ("/", "/healthz"):
                with pytest.raises(httpx.ConnectError):
                    await client.get(url + path)
        assert proc.returncode is None  # still running: only the listener is gone
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def spawn(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    """The demo app with `env` on a free port, once it listens."""
    full = {**os.environ, "TURNOUT_VERSION": "v2", **env}
    full.pop("PORT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    match = LISTENING.search(line)
    if match is None:
        proc.kill()
        await proc.wait()
        raise AssertionError(line)
    return proc, int(match.group(1))


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


def get(path: str, flags: str = "") -> bytes:
    extra = f"X-Turnout-Flags: {flags}\r\n" if flags else ""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nX-User-Id: u1\r\n{extra}\r\n".encode()


async def answer(reader: asyncio.StreamReader, within: float = 2.0) -> bytes:
    """One answer's head and body (the demo app always sends Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    length = re.search(rb"Content-Length: (\d+)", head)
    assert length, head
    return head + await asyncio.wait_for(reader.readexactly(int(length.group(1))), within)


@pytest.mark.serial  # the app stops within 1 s of SIGTERM
async def test_hang_takes_requests_and_never_answers_while_health_stays_200() -> None:
    proc, port = await spawn({"DEMO_FAIL": "hang"})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/") + get("/healthz"))  # the health check behind a hung request waits too
        await writer.drain()
        with pytest.raises(TimeoutError):
            await answer(reader, within=1.0)
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/cart", timeout=0.5)
        # A stop does not wait for answers that will never come: the hung connection is closed.
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert time.monotonic() - stopping < 1.0
        writer.close()
    finally:
        await stop(proc)


async def test_crash_after_n_answers_n_requests_then_exits_1() -> None:
    proc, port = await spawn({"DEMO_CRASH_AFTER": "3"})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for path in ("/", "/healthz", "/healthz", "/a", "/b"):  # health checks do not count
            writer.write(get(path))
            statuses.append((await answer(reader)).split(b" ", 2)[1])
        assert statuses == [b"200"] * 5
        assert await asyncio.wait_for(proc.wait(), 5) == 1
        assert proc.stdout is not None
        assert b"crashing (DEMO_CRASH_AFTER reached)" in await proc.stdout.read()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    finally:
        await stop(proc)


async def test_faults_behind_the_flag_hang_or_crash_only_the_new_code_path() -> None:
    proc, port = await spawn({"DEMO_FEATURE": "f", "DEMO_FEATURE_FAIL": "hang"})
    try:
        off_r, off_w = await asyncio.open_connection("127.0.0.1", port)
        on_r, on_w = await asyncio.open_connection("127.0.0.1", port)
        on_w.write(get("/", "f=on"))
        for _ in range(3):
            off_w.write(get("/", "f=off"))
            assert b"X-Version: v2\r\n" in await answer(off_r)
        with pytest.raises(TimeoutError):
            await answer(on_r, within=0.5)
        off_w.close()
        on_w.close()
    finally:
        await stop(proc)
    proc, port = await spawn({"DEMO_FEATURE": "f", "DEMO_FEATURE_CRASH_AFTER": "2"})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for flags in ("f=off", "f=on", "f=off", "f=off", "f=on"):
            writer.write(get("/", flags))
            assert (await answer(reader)).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(proc.wait(), 5) == 1  # after the second answer on the new path
        writer.close()
    finally:
        await stop(proc)


@pytest.mark.parametrize(("name", "value"), [
    ("DEMO_CRASH_AFTER", "0"), ("DEMO_FAIL", "freeze"), ("DEMO_FEATURE_FAIL", "hang"),
])
async def test_a_bad_fault_variable_exits_2_naming_it(name: str, value: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env={**os.environ, name: value},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"listening" not in out
    assert name.encode() in err and b"Traceback" not in err
