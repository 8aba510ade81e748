"""Real frameworks from PyPI deployed through the real CLI and router, under load.

A Flask app under gunicorn (sync workers) and a FastAPI app under uvicorn (`apps/`) are
each deployed twice with rolling, then blue-green, then canary while `Load` sends
constant traffic. Beside the load, a client keeps opening server-sent-event streams, uploading a
large body and downloading a large streamed one through the router. Each deployment
must show: no request failed or needed a second send, every event of every stream was
received before the app sent the next one (the router passes events on as they come,
it does not buffer them), and every upload and download came through byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.apps import payload
from tests.e2e.conftest import Service, check
from turnout.demo.load import Load

pytestmark = pytest.mark.slow

APPS = str(Path(__file__).parent / "apps")
FRAMEWORKS: dict[str, list[str]] = {
    "flask-gunicorn": [sys.executable, "-m", "gunicorn", "--pythonpath", APPS, "--bind", "127.0.0.1:{port}",
                       "--workers", "3", "--preload", "--graceful-timeout", "4", "--log-level", "warning",
                       "flask_app:app"],
    "fastapi-uvicorn": [sys.executable, "-m", "uvicorn", "--app-dir", APPS, "--host", "127.0.0.1",
                        "--port", "{port}", "--timeout-graceful-shutdown", "4", "--log-level", "warning",
                        "fastapi_app:app"],
}
STRATEGIES: dict[str, dict[str, Any]] = {
    "rolling": {"kind": "rolling", "max_surge": 1, "max_unavailable": 0},
    "blue-green": {"kind": "blue-green", "tests": [{"http": "/healthz"}], "rollback_window": "1s"},
    # Event streams the canary serves count as fast requests (the router times a response to its
    # first byte), so the default max_p99 holds.
    "canary": {"kind": "canary", "steps": [{"weight": 25}, {"pause": "800ms"}, {"weight": 60},
                                           {"pause": "800ms"}],
               "gate": {"interval": "200ms", "min_requests": 5}},
}
RATE = 100.0
EVENTS, EVENT_GAP_MS = 3, 200
BODY = 4 * 1024 * 1024  # far beyond socket buffers and the router's 64 KiB retry buffer
MAX_ROUNDS = 20  # of streams, uploads and downloads beside one deployment


def write_spec(service: Service, framework: str, strategy: str, *, drain_timeout: str = "5s") -> None:
    spec = {
        "service": "web",
        "listen": f"127.0.0.1:{service.port}",
        "instances": 2,
        "run": {"command": FRAMEWORKS[framework], "grace": "5s"},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "20s"},
        "routing": {"user_key": {"header": "X-User-Id"},
                    "preview_listen": f"127.0.0.1:{service.preview_port}", "drain_timeout": drain_timeout},
        "strategy": STRATEGIES[strategy],
    }
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


@dataclass
class Stream:
    """One event stream: when the app sent each event and when it came out of the router."""

    version: str
    sent: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)

    def late(self) -> list[int]:
        """Events that arrived only after the app had sent the next one."""
        return [i for i in range(len(self.sent) - 1) if self.received[i] >= self.sent[i + 1]]


@dataclass
class Exercised:
    streams: list[Stream] = field(default_factory=list)
    uploads: list[bool] = field(default_factory=list)  # the app's checksum equals ours
    downloads: list[bool] = field(default_factory=list)


async def listen(client: httpx.AsyncClient) -> Stream:
    params = {"count": EVENTS, "interval_ms": EVENT_GAP_MS}
    async with client.stream("GET", "/events", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response.headers["X-Version"])
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                stream.received.append(time.time())
                data = json.loads(line.removeprefix("data: "))
                assert data["i"] == len(stream.sent)
                stream.sent.append(data["sent"])
    return stream


async def upload(client: httpx.AsyncClient, rng: random.Random) -> bool:
    body = rng.randbytes(BODY)
    response = await client.post("/upload", content=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    return bool(answer == {"sha256": hashlib.sha256(body).hexdigest(), "length": BODY,
                           "version": response.headers["X-Version"]})


async def download(client: httpx.AsyncClient, seed: int) -> bool:
    expected = hashlib.sha256(b"".join(payload.download(BODY, seed))).hexdigest()
    digest, length = hashlib.sha256(), 0
    async with client.stream("GET", "/download", params={"size": BODY, "seed": seed}) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            length += len(chunk)
    return length == BODY and digest.hexdigest() == expected


async def exercise(url: str, stop: asyncio.Event) -> Exercised:
    """Streams, uploads and downloads side by side, round after round until `stop` (at least one)."""
    done = Exercised()
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=20) as client:
        for round_ in range(MAX_ROUNDS):
            stream, uploaded, downloaded = await asyncio.gather(
                listen(client), upload(client, rng), download(client, round_))
            done.streams.append(stream)
            done.uploads.append(uploaded)
            done.downloads.append(downloaded)
            if stop.is_set():
                break
    return done


def answered_after(load: Load, moment: float) -> set[str | None]:
    return {s.version for s in load.samples if s.sent >= moment}


async def deploy_under_load(service: Service, version: str, strategy: str) -> None:
    """Deploy `version` under load and side traffic; check what its clients saw."""
    stop = asyncio.Event()
    async with Load(service.url, rate=RATE, users=50, max_seconds=60) as load:
        beside = asyncio.create_task(exercise(service.url, stop))
        code, out, err = await service.arun("deploy", version)
        finished = time.monotonic()
        stop.set()
        exercised = await asyncio.wait_for(beside, 60)
        await asyncio.sleep(0.3)
    where = (strategy, version)
    assert code == 0, (where, out + err)
    summary = load.summary(new_version=version)
    assert summary.requests > 100, where
    assert summary.clean, (where, summary.problems())
    assert answered_after(load, finished) == {version}, where
    streams = exercised.streams
    assert all(len(s.sent) == EVENTS for s in streams), where
    late = [(s.version, s.late(), s.sent, s.received) for s in streams if s.late()]
    assert late == [], where
    assert all(exercised.uploads) and all(exercised.downloads), (where, exercised)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
async def test_a_real_framework_is_deployed_under_load_with_streams_and_large_bodies(
    service: Service, framework: str
) -> None:
    """Two deployments with each strategy in turn, one service (and one start-up) per framework."""
    write_spec(service, framework, "rolling")
    check(service.run("deploy", "v1"))
    versions = iter(range(2, 100))
    for strategy in STRATEGIES:
        write_spec(service, framework, strategy)
        for _ in range(2):
            await deploy_under_load(service, f"v{next(versions)}", strategy)
    status = service.status()
    assert status["stable"]["version"] == "v7"
    assert {v: share for v, share in status["router"]["traffic"].items() if share} == {"v7": 100}
