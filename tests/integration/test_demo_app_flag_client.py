"""The demo app evaluating its feature with turnout's flag client, against a real `turnout server`
over SQLite, both as processes on 127.0.0.1; and its DEMO_FLAGS_* settings refused."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.sdk.server_proc import ServerProcess

from turnout.demo.app import FIRST_STATE_S
from turnout.flags.store import FlagStore

pytestmark = pytest.mark.timeout(60)
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
FLAG = "checkout-v2"
DEFINITION = {"name": FLAG, "enabled": True,
              "strategies": [{"name": "userWithId", "parameters": {"userIds": "u1,u2"}}]}


@dataclass
class Served:
    store: FlagStore
    server: ServerProcess
    token: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db = f"sqlite:///{tmp_path / 'flags.db'}"
    store = FlagStore.open(db)
    token = store.create_token("demo-app", "client")
    store.create(DEFINITION, who="setup")
    server = ServerProcess.start(db)
    try:
        yield Served(store, server, token)
    finally:
        assert server.stop() == 0
        store.close()


@dataclass
class App:
    proc: asyncio.subprocess.Process
    port: int
    before: list[bytes]  # what it said before it listened

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def demo_app(env: dict[str, str]) -> AsyncIterator[App]:
    """The demo app (version v2) with `env`, once it listens; stopped (SIGTERM, exit 0) after."""
    full = {**os.environ, "TURNOUT_VERSION": "v2", **env}
    full.pop("PORT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        before = []
        for _ in range(10):
            line = await asyncio.wait_for(proc.stdout.readline(), FIRST_STATE_S + 10)
            assert line, f"the app exited before listening: {before}"
            if match := LISTENING.search(line):
                break
            before.append(line)
        else:
            raise AssertionError(f"the app never said it listens: {before}")
        yield App(proc, int(match.group(1)), before)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def version_for(client: httpx.AsyncClient, url: str, user: str | None, flags: str = "") -> str:
    headers = {"X-User-Id": user} if user else {}
    if flags:
        headers["X-Turnout-Flags"] = flags
    response = await client.get(url + "/", headers=headers)
    assert response.status_code == 200
    return response.headers["x-version"]


def cohort_counts(text: str) -> dict[tuple[str, str], float]:
    """demo_feature_requests_total by (cohort, code), for FLAG."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "demo_feature_requests_total" and s.labels["flag"] == FLAG:
                out[s.labels["cohort"], s.labels["code"]] = s.value
    return out


async def test_the_app_evaluates_its_flag_per_user_and_follows_a_change(served: Served) -> None:
    env = {"DEMO_FEATURE": FLAG, "DEMO_FLAGS_URL": served.server.url, "DEMO_FLAGS_TOKEN": served.token}
    sent = {"on": 0, "off": 0}

    async with demo_app(env) as app, httpx.AsyncClient(timeout=5, trust_env=False) as client:
        assert any(b"flag state received" in line for line in app.before)  # evaluated from the first request

        async def ask(user: str | None, flags: str = "") -> str:
            version = await version_for(client, app.url, user, flags)
            sent["on" if version == f"v2+{FLAG}" else "off"] += 1
            return version

        assert [await ask(u) for u in ("u1", "u2", "u9", None)] == [f"v2+{FLAG}", f"v2+{FLAG}", "v2", "v2"]
        assert await ask("u9", f"{FLAG}=on") == "v2"  # the router's word no longer counts
        served.store.set_enabled(FLAG, False, who="test")
        changed = time.monotonic()
        for _ in range(100):  # bounded: 100 tries, 2 s
            if await ask("u1") == "v2" or time.monotonic() - changed > 2.0:
                break
            await asyncio.sleep(0.02)
        took = time.monotonic() - changed
        assert await ask("u1") == "v2", f"u1 still on the new code path {took:.2f} s after the change"
        assert took < 2.0
        print(f"\nthe flag change reached the app's answers within {took * 1000:.0f} ms")
        assert await ask("u2") == "v2"
        metrics = (await client.get(app.url + "/metrics")).text

    assert sent["on"] >= 3 and sent["off"] >= 6
    assert cohort_counts(metrics) == {("on", "200"): sent["on"], ("off", "200"): sent["off"]}
    assert f'demo_feature_request_seconds_count{{cohort="on",flag="{FLAG}"}} {float(sent["on"])}' in metrics


async def test_without_the_flag_settings_the_router_header_still_decides(served: Served) -> None:
    async with (demo_app({"DEMO_FEATURE": FLAG}) as app,
                httpx.AsyncClient(timeout=5, trust_env=False) as client):
        assert await version_for(client, app.url, "u9", f"{FLAG}=on") == f"v2+{FLAG}"
        assert await version_for(client, app.url, "u1") == "v2"  # on for u1 in the server: not asked


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_an_unreachable_flag_server_delays_listening_then_the_flag_is_off() -> None:
    env = {"DEMO_FEATURE": FLAG, "DEMO_FLAGS_URL": f"http://127.0.0.1:{closed_port()}",
           "DEMO_FLAGS_TOKEN": "t"}
    started = time.monotonic()
    async with demo_app(env) as app, httpx.AsyncClient(timeout=5, trust_env=False) as client:
        waited = time.monotonic() - started
        assert any(b"no flag state within" in line for line in app.before)
        assert FIRST_STATE_S <= waited < FIRST_STATE_S + 5
        assert await version_for(client, app.url, "u1", f"{FLAG}=on") == "v2"


@pytest.mark.parametrize(("env", "named"), [
    ({"DEMO_FEATURE": FLAG, "DEMO_FLAGS_URL": "ftp://127.0.0.1", "DEMO_FLAGS_TOKEN": "t"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "http://127.0.0.1:1", "DEMO_FLAGS_TOKEN": "t"}, "DEMO_FEATURE"),
    ({"DEMO_FEATURE": FLAG, "DEMO_FLAGS_URL": "http://127.0.0.1:1"}, "DEMO_FLAGS_TOKEN"),
    ({"DEMO_FEATURE": FLAG, "DEMO_FLAGS_TOKEN": "t"}, "DEMO_FLAGS_URL"),
])
async def test_a_bad_flag_setting_exits_2_naming_it(env: dict[str, str], named: str) -> None:
    full = {**os.environ, **env}
    for name in ("DEMO_FEATURE", "DEMO_FLAGS_URL", "DEMO_FLAGS_TOKEN"):
        if name not in env:
            full.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"listening" not in out
    assert named.encode() in err and b"Traceback" not in err
