"""`HaproxyRouter` with a real HAProxy and real upstreams on 127.0.0.1: weights, the builtin
router's stickiness for the same keys, match rules, drains that free a slot, files that say
what HAProxy carries, counters of a pool that changes hands, and reloads or restarts that
keep the routing. (The contract suite, tests/contract, runs the rest against it.)"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.integration.haproxy_rig import need_haproxy
from tests.integration.test_proxy import Upstream, versions

from turnout.demo.load import Load
from turnout.errors import RouterError
from turnout.routers.base import Capability, NotSupported
from turnout.routers.haproxy import config, maps
from turnout.routers.haproxy.router import HaproxyRouter, Placement
from turnout.routers.proxy.balancer import Plan
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, Timeouts

USERS = 1000


@pytest.fixture
async def router() -> AsyncIterator[HaproxyRouter]:
    need_haproxy()
    folder = Path(tempfile.mkdtemp(prefix="thr-"))
    made = HaproxyRouter(folder / "h", service="web", listen="127.0.0.1:0",
                         preview_listen="127.0.0.1:0", slots=3)
    await made.ensure_running()
    try:
        yield made
    finally:
        await made.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def ups() -> AsyncIterator[dict[str, Upstream]]:
    servers = {name: await Upstream(name).start() for name in ("old", "new", "next")}
    yield servers
    for server in servers.values():
        await server.close()


def pool(revision: str, weight: int, *ups: Upstream) -> Pool:
    backends = tuple(Backend(id=f"{revision}-{i}", address=u.address) for i, u in enumerate(ups))
    return Pool(revision=revision, version=revision, weight=weight, backends=backends)


async def url(router: HaproxyRouter, *, preview: bool = False) -> str:
    info = await router.describe()
    return f"http://{info.preview if preview else info.listen}"


async def by_user(client: httpx.AsyncClient, base: str, users: int) -> dict[str, str]:
    found = {}
    for i in range(users):
        answer = await client.get(f"{base}/", headers={"X-User-Id": f"user-{i}"})
        found[f"user-{i}"] = answer.headers.get("x-version", str(answer.status_code))
    return found


async def test_weights_hold_within_two_points_and_are_counted(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    table = RoutingTable(generation=1, pools=(pool("new", 10, ups["new"]), pool("old", 90, ups["old"])))
    await router.apply(table)
    seen = await versions(await url(router), 5000)  # no user key: a random bucket each
    assert sum(seen.values()) == 5000
    assert abs(seen["new"] / 5000 - 0.10) <= 0.02, seen
    stats = await router.stats()
    assert stats.generation == 1
    assert {r: c.requests for r, c in stats.revisions.items()} == {"new": seen["new"], "old": seen["old"]}
    assert sum(stats.revisions["old"].latency) == seen["old"]


async def test_each_user_lands_where_the_builtin_router_sends_them(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    table = RoutingTable(generation=1, pools=(pool("new", 30, ups["new"]), pool("old", 70, ups["old"])))
    await router.apply(table)
    plan = Plan.compile(table)
    expected = {}
    for i in range(USERS):
        chosen = plan.route({b"x-user-id": f"user-{i}".encode()})
        assert chosen is not None
        expected[f"user-{i}"] = chosen.revision
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        assert await by_user(client, await url(router), USERS) == expected
        # the canary grows: users only move from old to new
        grown = table.model_copy(update={"generation": 2, "pools": (
            pool("new", 60, ups["new"]), pool("old", 40, ups["old"]))})
        await router.apply(grown)
        after = await by_user(client, await url(router), USERS)
    moved = Counter((expected[u], after[u]) for u in expected if expected[u] != after[u])
    assert set(moved) == {("old", "new")} and sum(Counter(after.values()).values()) == USERS


async def test_matched_users_all_reach_the_canary(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    rules = (MatchRule(revision="new", header="X-Beta", values=("yes",)),
             MatchRule(revision="new", users=("user-1", "user-2")))
    await router.apply(RoutingTable(generation=1, rules=rules, pools=(
        pool("new", 0, ups["new"]), pool("old", 100, ups["old"]))))
    base = await url(router)
    assert await versions(base, 200, {"X-Beta": "yes"}) == Counter({"new": 200})
    assert await versions(base, 200) == Counter({"old": 200})
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        assert (await by_user(client, base, 5)) == {
            "user-0": "old", "user-1": "new", "user-2": "new", "user-3": "old", "user-4": "old"}


async def test_the_preview_listener_serves_the_preview_revision(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    await router.apply(RoutingTable(generation=1, preview="new", pools=(
        pool("new", 0, ups["new"]), pool("old", 100, ups["old"]))))
    assert await versions(await url(router, preview=True), 20) == Counter({"new": 20})
    assert await versions(await url(router), 20) == Counter({"old": 20})


async def test_a_released_backend_drains_then_frees_its_slot(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    old, new = ups["old"], ups["new"]
    both = Pool(revision="app", version="app", weight=100, backends=(
        Backend(id="a-0", address=old.address), Backend(id="a-1", address=new.address)))
    await router.apply(RoutingTable(generation=1, pools=(both,)))
    base = await url(router)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        held = [asyncio.create_task(client.get(f"{base}/sleep?s=0.6")) for _ in range(2)]
        await asyncio.sleep(0.2)  # round robin: one on each backend
        assert (await router.stats()).in_flight == {"a-0": 1, "a-1": 1}
        one = both.model_copy(update={"backends": both.backends[1:]})
        await router.apply(RoutingTable(generation=2, pools=(one,)))
        assert await versions(base, 10) == Counter({"new": 10})  # none to the released one
        assert await router.drained("a-0") is False  # its request is still in flight
        assert sorted(r.headers["x-version"] for r in await asyncio.gather(*held)) == ["new", "old"]
    assert await router.drained("a-0") is True
    states = {s.server: s.state for s in await router.runtime.servers_state("web_p0")}
    assert states == {"s0": "maint", "s1": "ready", "s2": "maint"}
    placement = Placement.model_validate_json(router.table_path.read_bytes())
    assert placement.released == {} and placement.slots == {"a-1": (0, 1)}
    # three more backends fit in the pool's three slots again
    three = Pool(revision="app", version="app", weight=100, backends=tuple(
        Backend(id=f"a-{i}", address=u.address) for i, u in enumerate(ups.values(), start=1)))
    await router.apply(RoutingTable(generation=3, pools=(three,)))
    assert set(await versions(base, 30)) == {"old", "new", "next"}
    four = three.model_copy(update={"backends": (*three.backends, Backend(id="a-9", address=old.address))})
    with pytest.raises(RouterError, match="no free server slot left in web_p0"):
        await router.apply(RoutingTable(generation=4, pools=(four,)))


async def test_the_files_say_what_haproxy_carries(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    table = RoutingTable(generation=1, pools=(pool("new", 20, ups["new"]), pool("old", 80, ups["old"])))
    await router.apply(table)
    placement = Placement.model_validate_json(router.table_path.read_bytes())
    text = router.process.config_path.read_text()
    assert text == config.render(router._layout(placement))
    assert f"server s0 {ups['new'].address}\n" in text and f"server s0 {ups['old'].address}\n" in text
    entries = dict(await router.runtime.map_entries(router._map_name()))
    assert router.map_path.read_text() == maps.map_text(entries)
    assert entries == maps.entries("web", table, {"new": "web_p0", "old": "web_p1"})


async def test_a_reload_or_a_restart_keeps_the_routing(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    table = RoutingTable(generation=1, pools=(pool("new", 50, ups["new"]), pool("old", 50, ups["old"])))
    await router.apply(table)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        before = await by_user(client, await url(router), 100)
        slower = table.model_copy(update={"generation": 2, "timeouts": Timeouts(response=90)})
        await router.apply(slower)  # a change only the file holds: a reload
        [master, *_] = await router.process.master.processes()
        assert master.reloads == 1 and "timeout server 90000ms" in router.process.config_path.read_text()
        assert await by_user(client, await url(router), 100) == before
        await router.stop()
        restarted = HaproxyRouter(router.folder, service="web", listen="127.0.0.1:0",
                                  preview_listen="127.0.0.1:0", slots=3)
        await restarted.ensure_running()
        assert (await restarted.describe()).listen == (await router.describe()).listen
        assert await by_user(client, await url(restarted), 100) == before
        assert await restarted.table() == slower


async def test_a_pool_that_changes_hands_counts_its_new_revision_from_zero(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups["old"]),)))
    await versions(await url(router), 40)
    await router.apply(RoutingTable(generation=2, pools=(pool("new", 100, ups["new"]),)))
    assert await router.drained("old-0") is True
    assert Placement.model_validate_json(router.table_path.read_bytes()).pools == {"new": 1}
    await router.apply(RoutingTable(generation=3, pools=(
        pool("next", 100, ups["next"]), pool("new", 0, ups["new"]))))
    placement = Placement.model_validate_json(router.table_path.read_bytes())
    assert placement.pools["next"] == 0  # the pool "old" had
    await versions(await url(router), 7)
    counted = (await router.stats()).revisions
    assert counted["next"].requests == 7 and counted["new"].requests == 0


async def test_flags_are_refused_and_so_is_an_older_table(router: HaproxyRouter) -> None:
    assert Capability.FLAGS not in router.capabilities
    with pytest.raises(NotSupported, match="cannot evaluate flags"):
        await router.set_flags({}, revision=1)
    await router.apply(RoutingTable(generation=5))
    with pytest.raises(RouterError, match="generation 5, newer than 4"):
        await router.apply(RoutingTable(generation=4))


async def test_more_slots_come_by_a_reload_before_they_are_filled(
    router: HaproxyRouter, ups: dict[str, Upstream]
) -> None:
    await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups["old"]),)))
    wider = HaproxyRouter(router.folder, service="web", listen="127.0.0.1:0",
                          preview_listen="127.0.0.1:0", slots=5)  # the spec asks for more
    five = Pool(revision="old", version="old", weight=100, backends=tuple(
        Backend(id=f"old-{i}", address=ups["old" if i % 2 else "next"].address) for i in range(5)))
    async with Load(await url(router) + "/", rate=200, users=20, max_seconds=30) as load:
        await asyncio.sleep(0.3)
        await wider.apply(RoutingTable(generation=2, pools=(five,)))
        await asyncio.sleep(0.3)
    summary = load.summary(new_version="")
    assert summary.clean, summary.problems()
    [master, *_] = await router.process.master.processes()
    assert master.reloads == 1
    servers = await wider.runtime.servers_state("web_p0")
    assert [(s.server, s.state) for s in servers] == [(f"s{i}", "ready") for i in range(5)]
    assert set(await versions(await url(router), 20)) == {"old", "next"}
