"""`AdoptedHaproxy` against a real HAProxy that "the user" runs on 127.0.0.1 from a file of
their own (two frontends, a backend turnout owns and others it must leave alone): weights
that split the traffic and are counted per revision, slots filled, drained and freed, the
file changed only in turnout's backend, a reload of that file that keeps the routing, what
`ensure_running` refuses, and a control plane killed while it applies."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.integration.haproxy_rig import need_haproxy
from tests.integration.test_proxy import Upstream, versions

from turnout import procs
from turnout.errors import RouterError
from turnout.routers.base import Capability
from turnout.routers.haproxy import section
from turnout.routers.haproxy.adopted import AdoptedHaproxy, spread
from turnout.routers.haproxy.process import HaproxyProcess
from turnout.routers.haproxy.runtime import ServerState
from turnout.routers.table import Backend, Pool, RoutingTable
from turnout.spec.routing import Adopt

USER_CONFIG = """\
# The user's HAProxy: a shop that turnout deploys, and a site that it must not touch.
global
    master-worker
    stats socket {folder}/admin.sock mode 600 level admin
\tstats socket {folder}/operator.sock mode 600 level operator
    stats timeout 30s

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    option redispatch
    retries 2

frontend web
    bind 127.0.0.1:{port}
    use_backend static if {{ path_beg /static }}
    default_backend shop

frontend other   # another site
\tbind 127.0.0.1:{other_port}
\tdefault_backend static

backend shop
    balance roundrobin
    # turnout's slots
    server s0 127.0.0.1:1 disabled
    server s1 127.0.0.1:1 disabled
    server s2 127.0.0.1:1 disabled
    server s3 127.0.0.1:1 disabled   # a spare

backend static
    server st0 {static} weight 3
    server st1 127.0.0.1:1 disabled

backend hashed
    balance source
    server h0 {static}
"""


@dataclass
class Users:
    """The user's HAProxy, its file, and the upstreams the tests deploy."""

    process: HaproxyProcess
    folder: Path
    url: str
    other_url: str
    original: bytes
    ups: dict[str, Upstream]

    @property
    def config(self) -> Path:
        return self.process.config_path

    def router(self, *, config: bool = True, backend: str = "shop", slots: int = 4,
               socket: str = "admin.sock") -> AdoptedHaproxy:
        adopt = Adopt(socket=str(self.folder / socket), backend=backend,
                      config=str(self.config) if config else None)
        return AdoptedHaproxy(self.folder / "turnout", adopt, listen=self.url[7:], slots=slots)

    async def shop(self) -> dict[str, ServerState]:
        return {s.server: s for s in await self.process.runtime.servers_state("shop")}


@pytest.fixture
async def users() -> AsyncIterator[Users]:
    need_haproxy()
    folder = Path(tempfile.mkdtemp(prefix="tad-"))  # short: UNIX socket paths
    ups = {name: await Upstream(name).start() for name in ("old", "old2", "new", "new2", "static")}
    port, other = procs.free_port("127.0.0.1"), procs.free_port("127.0.0.1")
    process = HaproxyProcess(folder)
    text = USER_CONFIG.format(folder=folder, port=port, other_port=other,
                              static=ups["static"].address)
    process.config_path.write_text(text)
    try:
        await process.start()
        yield Users(process, folder, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other}",
                    text.encode(), ups)
    finally:
        await process.stop()
        for upstream in ups.values():
            await upstream.close()
        shutil.rmtree(folder, ignore_errors=True)


def pool(revision: str, weight: int, *ups: Upstream) -> Pool:
    backends = tuple(Backend(id=f"{revision}-{i}", address=u.address) for i, u in enumerate(ups))
    return Pool(revision=revision, version=revision, weight=weight, backends=backends)


def ready(servers: dict[str, ServerState]) -> dict[str, tuple[str, int]]:
    """Address and weight of each server that takes requests."""
    return {name: (s.address, s.weight) for name, s in servers.items() if s.state == "ready"}


def assert_file_holds(users: Users, servers: dict[str, ServerState]) -> None:
    """The user's file: every line as it was but the shop's `server` lines, which say what
    HAProxy carries (address, weight, disabled unless ready)."""
    before = users.original.splitlines(keepends=True)
    after = users.config.read_bytes().splitlines(keepends=True)
    assert len(after) == len(before)
    lines = section.server_lines(users.original.decode(), "shop")
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        if i not in lines.values():
            assert new == old, f"line {i + 1} changed: {old!r} -> {new!r}"
    for name, at in lines.items():
        words = after[at].decode().split("#")[0].split()
        s = servers[name]
        state = [] if s.state == "ready" else ["disabled"]
        assert words[2:] == [s.address, "weight", str(s.weight), *state]


async def test_weights_split_the_traffic_and_are_counted_per_revision(users: Users) -> None:
    router = users.router()
    await router.ensure_running()
    ups = users.ups
    table = RoutingTable(generation=1, pools=(pool("new", 20, ups["new"]),
                                              pool("old", 80, ups["old"], ups["old2"])))
    await router.apply(table)
    seen = await versions(users.url, 2000)
    assert seen["new"] + seen["old"] + seen["old2"] == 2000
    assert abs(seen["new"] / 2000 - 0.20) <= 0.02, seen
    stats = await router.stats()
    assert (stats.generation, stats.revisions["new"].requests, stats.revisions["old"].requests) == (
        1, seen["new"], seen["old"] + seen["old2"])
    assert stats.revisions["new"].error_rate == 0 and sum(stats.revisions["new"].latency) == 0
    assert set(stats.in_flight) == {"new-0", "old-0", "old-1"}
    assert {s: w for s, (_, w) in ready(await users.shop()).items()} == spread(table, router._load().slots)
    assert await router.table() == table
    assert await versions(f"{users.other_url}", 20) == Counter({"static": 20})  # the other site


async def test_slots_fill_drain_and_are_free_again(users: Users) -> None:
    router = users.router()
    await router.ensure_running()
    ups = users.ups
    await router.apply(RoutingTable(generation=1, pools=(pool("a", 100, ups["old"]),)))
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        held = asyncio.create_task(client.get(f"{users.url}/sleep?s=1.5"))
        for _ in range(100):  # until HAProxy has it in flight (1 s at most)
            if (await router.stats()).in_flight.get("a-0"):
                break
            await asyncio.sleep(0.01)
        await router.apply(RoutingTable(generation=2, pools=(
            Pool(revision="a", version="a", weight=100,
                 backends=(Backend(id="a-1", address=ups["new"].address),)),)))
        drained_slot = router._load().released["a-0"]
        assert (await users.shop())[drained_slot].state == "drain"
        assert (await router.stats()).in_flight["a-0"] == 1
        assert await router.drained("a-0") is False
        assert await versions(users.url, 50) == Counter({"new": 50})  # no new request to a-0
        assert (await held).status_code == 200  # the one in flight finished
    assert await router.drained("a-0") is True
    servers = await users.shop()
    assert servers[drained_slot].state == "maint" and "a-0" not in router._load().released
    assert_file_holds(users, servers)
    with pytest.raises(RouterError, match="no free server for c-3"):  # 4 slots, 1 taken
        await router.apply(RoutingTable(generation=3, pools=(pool("c", 100, *[ups["new2"]] * 4),)))
    await router.apply(RoutingTable(generation=3, pools=(pool("c", 100, *[ups["new2"]] * 3),)))
    assert len(ready(await users.shop())) == 3  # every free slot taken, the drained one too


async def test_only_turnouts_servers_change_in_the_users_file(users: Users) -> None:
    router = users.router()
    await router.ensure_running()
    ups = users.ups
    tables = [
        (pool("old", 100, ups["old"], ups["old2"]),),
        (pool("new", 10, ups["new"]), pool("old", 90, ups["old"], ups["old2"])),
        (pool("new", 60, ups["new"], ups["new2"]), pool("old", 40, ups["old"])),
        (pool("new", 100, ups["new"], ups["new2"]),),
    ]
    for generation, pools in enumerate(tables, 1):
        await router.apply(RoutingTable(generation=generation, pools=pools))
        assert_file_holds(users, await users.shop())
    for backend_id in list(router._load().released):
        assert await router.drained(backend_id)
    assert_file_holds(users, await users.shop())
    text = users.config.read_text()
    assert section.outside(text, "shop").encode() == section.outside(users.original.decode(), "shop").encode()
    await users.process.check()  # HAProxy takes the file as it is now


async def test_a_reload_of_the_users_file_keeps_turnouts_routing(users: Users) -> None:
    router = users.router()
    ups = users.ups
    await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups["old"]),)))
    await router.apply(RoutingTable(generation=2, pools=(
        pool("new", 30, ups["new"]), pool("old", 70, ups["old"], ups["old2"]))))
    before = await users.shop()
    worker = (await router.stats()).worker
    await users.process.reload()  # the user's master reads the file again: a new worker
    after = await users.shop()
    assert {n: (s.address, s.weight, s.state) for n, s in after.items()} == {
        n: (s.address, s.weight, s.state) for n, s in before.items()}
    seen = await versions(users.url, 2000)
    assert abs(seen["new"] / 2000 - 0.30) <= 0.02, seen
    stats = await router.stats()
    assert stats.worker != worker  # counted from the new worker's start
    assert stats.revisions["new"].requests == seen["new"]


async def test_without_config_only_the_running_haproxy_changes(users: Users) -> None:
    router = users.router(config=False)
    await router.ensure_running()
    await router.apply(RoutingTable(generation=1, pools=(pool("new", 100, users.ups["new"]),)))
    assert await versions(users.url, 20) == Counter({"new": 20})
    assert users.config.read_bytes() == users.original
    await users.process.reload()  # what the README warns of: the file's servers again
    assert ready(await users.shop()) == {}
    assert await versions(users.url, 5) == Counter({"503": 5})


async def test_ensure_running_says_what_is_missing(users: Users) -> None:
    cases = [
        (users.router(socket="gone.sock"), "the adopted HAProxy does not answer"),
        (users.router(socket="operator.sock"), "answers at level 'operator': turnout needs `level admin`"),
        (users.router(backend="cart"), "has no backend 'cart' \\(it has: shop, static, hashed\\)"),
        (users.router(backend="hashed"), "balances source: .* needs `balance roundrobin`"),
        (users.router(slots=6), "has 4 servers; turnout needs 6 .*`server s4 127.0.0.1:1 disabled`, "
                                "`server s5 127.0.0.1:1 disabled`"),
    ]
    for router, says in cases:
        with pytest.raises(RouterError, match=says):
            await router.ensure_running()
    spare = "    server s3 127.0.0.1:1 disabled   # a spare\n"
    users.config.write_text(users.original.decode().replace(spare, ""))
    with pytest.raises(RouterError, match="does not declare s3 in backend shop"):
        await users.router().ensure_running()
    users.config.write_bytes(users.original)
    router = users.router()
    await router.ensure_running()
    assert router.capabilities == frozenset({Capability.WEIGHTS, Capability.DRAIN})
    info = await router.describe()
    assert info.running and info.kind == "haproxy" and info.details["backend"] == "shop"
    await router.stop()  # leaves the user's HAProxy as it is
    assert (await router.describe()).running and users.process.pid() is not None


async def test_a_server_taken_by_another_revision_counts_for_it_from_then_on(users: Users) -> None:
    router = users.router()
    ups = users.ups
    await router.apply(RoutingTable(generation=1, pools=(pool("old", 100, ups["old"]),)))
    assert await versions(users.url, 50) == Counter({"old": 50})
    await router.apply(RoutingTable(generation=2, pools=(pool("new", 100, ups["new"]),)))
    freed = router._load().released["old-0"]
    assert await router.drained("old-0")
    await router.apply(RoutingTable(generation=3, pools=(
        pool("new", 100, ups["new"], ups["new2"]),
        Pool(revision="old", version="old", weight=0,
             backends=(Backend(id="old-1", address=ups["old2"].address),)))))
    assert router._load().slots["new-1"] == freed  # the first free server: old's, drained
    seen = await versions(users.url, 40)
    stats = await router.stats()
    assert {r: c.requests for r, c in stats.revisions.items()} == {"new": 40, "old": 50}
    assert seen == Counter({"new": 20, "new2": 20})


CHILD = """
import asyncio, json, sys
from pathlib import Path
from turnout.routers.haproxy.adopted import AdoptedHaproxy
from turnout.routers.table import RoutingTable
from turnout.spec.routing import Adopt

async def main():
    folder, socket, config, tables = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    router = AdoptedHaproxy(Path(folder), Adopt(socket=socket, backend="shop", config=config))
    for generation in range(1, 1000):
        table = RoutingTable.model_validate(tables[generation % len(tables)])
        await router.apply(table.model_copy(update={"generation": generation}))
        print(generation, flush=True)

asyncio.run(main())
"""


async def test_a_control_plane_killed_while_applying_leaves_haproxy_serving_its_last_routing(
    users: Users,
) -> None:
    ups = users.ups
    tables = [RoutingTable(pools=(pool("old", 100, ups["old"], ups["old2"]),)),
              RoutingTable(pools=(pool("new", 50, ups["new"]), pool("old", 50, ups["old"]))),
              RoutingTable(pools=(pool("new", 100, ups["new"], ups["new2"]),))]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(users.folder / "turnout"), str(users.process.admin_socket),
        str(users.config), json.dumps([t.model_dump(mode="json") for t in tables]),
        stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    done = 0
    try:
        while done < 4:  # then killed, most likely in the middle of the 5th apply
            line = await asyncio.wait_for(child.stdout.readline(), 20)
            assert line, "the child ended"
            done = int(line)
    finally:
        child.kill()  # SIGKILL: nothing of it runs on
        await child.wait()
    servers = await users.shop()
    options = [tables[g % len(tables)] for g in (done, done + 1)]  # applied, or being applied
    addresses = {b.address for t in options for p in t.pools for b in p.backends}
    assert ready(servers) and all(a in addresses for a, _ in ready(servers).values())
    seen = await versions(users.url, 200)
    assert sum(seen.values()) == 200 and set(seen) <= {"old", "old2", "new", "new2"}, seen
    # the next command takes over from whatever HAProxy carries
    router = users.router()
    last = tables[(done + 2) % len(tables)].model_copy(update={"generation": done + 2})
    await router.apply(last)
    carried = {a for a, _ in ready(await users.shop()).values()}
    assert carried == {b.address for p in last.pools for b in p.backends}
    assert_file_holds(users, await users.shop())
