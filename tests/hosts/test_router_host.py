"""The builtin router on one of the hosts (`router.host`), steered over SSH.

turnout sends the router's code to the host, starts it there, reaches its admin API through
a forwarded socket, and users reach it at the host's address: deployments across the four
hosts fail no request through it, blue-green tests reach its preview address, `status`
names its host, and `down` stops it there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import check, kill_at_first_traffic
from tests.hosts.harness import HostFleet
from tests.hosts.service import HostService
from turnout.demo.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # on the test hosts: alone, after the parallel pass

RATE = 100.0
STEPS: list[tuple[str, dict[str, object]]] = [
    ("v1", {"kind": "rolling", "max_surge": 2, "max_unavailable": 0}),
    ("v2", {"kind": "rolling", "max_surge": 2, "max_unavailable": 0}),
    ("v3", {"kind": "blue-green", "tests": [{"http": "/healthz"}], "rollback_window": "0s"}),
    ("v4", {"kind": "canary", "steps": [{"weight": 25}, {"pause": "500ms"}, {"weight": 100}],
            "gate": {"interval": "150ms", "min_requests": 3}}),
]


@pytest.fixture
def shop(tmp_path: Path, hosts: HostFleet) -> Iterator[HostService]:
    service = HostService(tmp_path, hosts, router_host=hosts.hosts[0])
    service.write()
    yield service
    hosts.reset()
    service.run("down", timeout=60)


def proxies_on(fleet: HostFleet, index: int) -> list[str]:
    """The command lines of turnout routers running on that host."""
    out = fleet.exec(fleet.hosts[index], ["pgrep", "-a", "-u", "deploy", "-f", "turnout.routers.proxy "])
    return out.stdout.splitlines()


async def test_deployments_through_a_router_on_a_host_fail_no_request(shop: HostService) -> None:
    for version, strategy in STEPS:
        shop.write(strategy)
        async with Load(shop.url, rate=RATE, users=40, max_seconds=120, private_network=True) as load:
            code, out, err = await shop.arun("deploy", version)
            load.mark("returned")
            await asyncio.sleep(0.5)
        assert code == 0, f"{version}: exit {code}\n{out}\n{err}"
        if version != "v1":  # before v1 there is nothing to route to
            summary = load.summary(new_version=version, until=load.marks["returned"])
            assert summary.clean, f"{version}: {summary.problems()}"
        assert {s.version for s in load.samples if s.sent >= load.marks["returned"]} == {version}
    assert proxies_on(shop.fleet, 0), "the router runs on the chosen host"
    assert not any(proxies_on(shop.fleet, i) for i in (1, 2, 3))
    status = shop.status()
    router = status["router"]
    assert router["running"] is True and router["where"]["host"] == shop.fleet.hosts[0].address
    assert router["where"]["admin"] == "~/.local/state/turnout/routers/shop/admin.sock"
    shown = shop.run("status")
    check(shown)
    assert f"router   running on host {shop.fleet.hosts[0].address}" in shown.stdout
    check(shop.run("down", timeout=60))
    assert not proxies_on(shop.fleet, 0)


async def test_a_killed_control_plane_leaves_the_router_on_its_host_serving(shop: HostService) -> None:
    check(shop.run("deploy", "v1"))
    shop.write({"kind": "canary", "steps": [{"weight": 50}, {"pause": "30s"}, {"weight": 100}]})
    async with Load(shop.url, rate=RATE, users=40, max_seconds=60, private_network=True) as load:
        await kill_at_first_traffic(shop, "v2")  # kill -9 of the CLI once v2 has traffic
        load.mark("killed")
        await asyncio.sleep(1.0)
        code, out, err = await shop.arun("abort")
        load.mark("aborted")
        await asyncio.sleep(0.5)
    assert code == 0, out + err
    killed = load.summary(new_version="v2", until=load.marks["aborted"])
    assert killed.clean, killed.problems()  # the router kept serving while no turnout ran
    assert {s.version for s in load.samples if s.sent >= load.marks["aborted"]} == {"v1"}

