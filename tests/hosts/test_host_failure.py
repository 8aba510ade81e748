"""A host lost in the middle of a deployment across four hosts, under load.

The host is stopped (its container shut down: its units stop, its address vanishes) or cut
off the network (packets to it go unanswered) while a rolling deployment replaces one host
per batch. Without `max_unavailable_hosts` the deployment rolls back on the hosts left; with
it, it goes on without the lost host. Either way the router stops sending to the lost
instances. Requests that failed are counted and shown, split at the moment the router
noticed (the first failed connect to the lost host makes it pass that host over).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import cli_env
from tests.hosts.harness import Host, HostFleet
from tests.hosts.service import HostService
from turnout.demo.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # on the test hosts: alone, after the parallel pass

RATE = 100.0
ROLLING = {"kind": "rolling", "max_surge": 2, "max_unavailable": 0}


@pytest.fixture
def shop(tmp_path: Path, hosts: HostFleet) -> Iterator[HostService]:
    service = HostService(tmp_path, hosts)
    service.write(ROLLING)
    yield service
    hosts.reset()  # every host back and reachable, its units stopped
    service.run("down", timeout=60)  # and the router on this machine


async def deploy_losing(shop: HostService, lost: Host, how: str) -> tuple[int, str, float]:
    """`turnout deploy v2`, with `lost` stopped or cut once the first batch has traffic;
    (exit code, output, when the host was gone)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "deploy", "v2", "--json", cwd=shop.folder, env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    gone = 0.0
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 180)).decode()
        if not line:
            break
        lines.append(line)
        if not gone and line.startswith("{") and json.loads(line).get("kind") == "traffic":
            act = shop.fleet.stop_host if how == "stop" else shop.fleet.cut
            await asyncio.to_thread(act, lost)
            gone = time.monotonic()
    code = await asyncio.wait_for(proc.wait(), 60)
    assert gone, "the deployment ended before its first change of traffic"
    return code, "".join(lines), gone


@pytest.mark.parametrize("how", ["stop", "cut"])
async def test_a_host_lost_mid_deployment_rolls_back_on_the_hosts_left(shop: HostService, how: str) -> None:
    async with Load(shop.url, rate=RATE, users=40, max_seconds=120):
        code, out, err = await shop.arun("deploy", "v1")
    assert code == 0, out + err
    lost = shop.fleet.hosts[3]
    async with Load(shop.url, rate=RATE, users=40, max_seconds=180, timeout=30) as load:
        code, output, gone = await deploy_losing(shop, lost, how)
        await asyncio.sleep(1.0)
        load.mark("after")
        await asyncio.sleep(1.0)
    assert code == 3, output
    assert f"host {lost.address} lost" in output, output
    status = shop.status()
    assert {i["version"] for i in status["instances"] if i["healthy"]} == {"v1"}
    serving = {i["host"] for i in status["instances"] if i["healthy"]}
    assert serving == {h.address for h in shop.fleet.hosts[:3]}, status["instances"]
    failed = [s for s in load.samples if s.error or (s.status or 0) >= 500]
    late = [s for s in failed if s.sent >= gone + 1.0]
    print(f"{how}: {len(load.samples)} requests, {len(failed)} failed "
          f"({len(failed) - len(late)} sent before the router noticed, {len(late)} after)")
    assert late == [], [(s.sent - gone, s.status, s.error) for s in late]
    assert {s.version for s in load.samples if s.sent >= load.marks["after"]} == {"v1"}


async def test_with_max_unavailable_hosts_the_deployment_goes_on_without_the_lost_host(
    shop: HostService,
) -> None:
    shop.write(ROLLING, platform=shop.platform(max_unavailable_hosts=1))
    async with Load(shop.url, rate=RATE, users=40, max_seconds=120):
        code, out, err = await shop.arun("deploy", "v1")
    assert code == 0, out + err
    lost = shop.fleet.hosts[3]
    async with Load(shop.url, rate=RATE, users=40, max_seconds=180, timeout=30) as load:
        code, output, gone = await deploy_losing(shop, lost, "stop")
        await asyncio.sleep(1.0)
        load.mark("after")
        await asyncio.sleep(1.0)
    assert code == 0, output
    assert f"host {lost.address} lost" in output and "not started: its host is lost" in output, output
    status = shop.status()
    healthy = {i["host"] for i in status["instances"] if i["healthy"]}
    assert healthy == {h.address for h in shop.fleet.hosts[:3]}
    assert {s.version for s in load.samples if s.sent >= load.marks["after"]} == {"v2"}
    failed = [s for s in load.samples if s.error or (s.status or 0) >= 500]
    assert [s for s in failed if s.sent >= gone + 1.0] == []
