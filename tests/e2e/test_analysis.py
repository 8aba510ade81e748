"""Canaries judged against their baseline through the real CLI, router and demo app.

- A/A: the same code on both sides, compared at every look with the sequential judge,
  throughout and at the pause: promoted every time, never rolled back.
- A canary too thin to judge within its pause holds for a human and is not promoted.
- A canary judged on a metric only the app knows (checkouts that fail behind a 200),
  scraped by a real Prometheus server and queried per version with PromQL, is rolled back
  when that metric degrades, while the router saw nothing wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Service, check
from tests.e2e.test_deploy import app_addresses
from tests.prom import PrometheusServer
from turnout.demo.load import Load

pytestmark = pytest.mark.slow

COMPARED = {"max_error_rate_increase": "2%", "max_p99_increase": "100ms", "interval": "250ms",
            "min_requests": 20}


def write(service: Service, strategy: dict[str, Any], **top: Any) -> None:
    spec = {
        "service": "shop",
        "listen": f"127.0.0.1:{service.port}",
        "instances": 2,
        "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}"],
                "grace": "3s", **top.pop("run", {})},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "4s"},
        "routing": {"user_key": {"header": "X-User-Id"},
                    "preview_listen": f"127.0.0.1:{service.preview_port}", "drain_timeout": "3s"},
        "strategy": strategy,
        **top,
    }
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.mark.serial  # p99 of canary and baseline alike within 100 ms
async def test_a_a_canaries_compared_with_their_baseline_are_always_promoted(service: Service) -> None:
    # Showing a canary within 1% needs some hundreds of its requests (800 without errors):
    # 200 a second reach it during its 5 s pause.
    strategy = {"kind": "canary", "steps": [{"weight": 50}, {"pause": "5s"}],
                "gate": COMPARED, "analysis": COMPARED}
    write(service, strategy)
    check(service.run("deploy", "v1"))
    async with Load(service.url, rate=400, users=50, max_seconds=120):
        for number in range(2, 6):  # the same code as v1 every time
            code, out, err = await service.arun("deploy", f"v{number}")
            assert code == 0, f"v{number}: exit {code}\n{out}\n{err}"
            assert "succeeded" in out, out
    history = service.run("history", "--json")
    check(history)
    assert '"rolled-back"' not in history.stdout and '"failed"' not in history.stdout


async def test_a_canary_too_thin_to_judge_holds_and_is_not_promoted(service: Service) -> None:
    strategy = {"kind": "canary", "steps": [{"weight": 10}, {"pause": "1s"}],
                "gate": {**COMPARED, "min_requests": 500}}
    write(service, strategy)
    check(service.run("deploy", "v1"))
    async with Load(service.url, rate=20, users=20, max_seconds=30):
        task = asyncio.create_task(service.arun("deploy", "v2"))
        for _ in range(100):
            await asyncio.sleep(0.1)
            deployment = service.status()["deployment"]
            if deployment and deployment["phase"] == "paused":
                break
        await asyncio.sleep(1.0)
        status = service.status()
        assert status["deployment"]["phase"] == "paused", status  # still held, not promoted
        assert "inconclusive" in status["deployment"]["message"], status
        assert status["stable"]["version"] == "v1"
        check(service.run("abort"))
        code, out, err = await task
    assert code == 3, out + err  # the abort took it back
    assert service.status()["stable"]["version"] == "v1"


@contextlib.asynccontextmanager
async def scraping(folder: Path, prometheus: PrometheusServer) -> AsyncIterator[None]:
    """Keep Prometheus scraping (job `shop`) every demo app process of the service in
    `folder`, as they come and go."""
    async def follow() -> None:
        seen: list[str] = []
        while True:
            addresses = app_addresses(folder)
            if addresses != seen:
                prometheus.scrape("shop", addresses)
                seen = addresses
            await asyncio.sleep(0.2)

    task = asyncio.create_task(follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_canary_worse_on_an_app_metric_in_prometheus_is_rolled_back(
    service: Service, prometheus: PrometheusServer,
) -> None:
    metrics = {"kind": "prometheus", "url": prometheus.url,
               "requests": 'sum(demo_checkouts_total{version="{version}"})',
               "errors": 'sum(demo_checkouts_failed_total{version="{version}"})',
               "latency": 'sum by (le) (demo_request_seconds_bucket{version="{version}"})'}
    strategy = {"kind": "canary", "steps": [{"weight": 50}, {"pause": "40s"}],
                "gate": {"max_error_rate_increase": "5%", "interval": "500ms", "min_requests": 20}}
    write(service, strategy, metrics=metrics)
    check(service.run("deploy", "v1"))
    write(service, strategy, metrics=metrics, run={"env": {"DEMO_CHECKOUT_FAIL_RATE": "0.3"}})
    async with scraping(service.folder, prometheus), \
            Load(service.url + "checkout", rate=100, users=50, max_seconds=90) as load:
        code, out, err = await service.arun("deploy", "v2")
    assert code == 3, f"exit {code}\n{out}\n{err}"
    assert "gate failed" in out and "error rate" in out, out
    assert service.status()["stable"]["version"] == "v1"
    # Every answer was a 200: the router's counters alone would have promoted it.
    assert all(s.status == 200 for s in load.samples if s.version == "v2")
    assert any(s.version == "v2" for s in load.samples)
