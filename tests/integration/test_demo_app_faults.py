"""The demo app's `DEMO_FAIL=refuse` as a real process: healthy once, then no connection at all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

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
