"""The HAProxy runtime API client against a real HAProxy on 127.0.0.1: what it parses from
real answers, and the steering the router relies on (slots filled with `set server addr`,
drain then maint, refilled slots, atomic map swaps), each seen through real requests to real
upstreams (`tests.integration.test_proxy.Upstream`, which name themselves in X-Version)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from tests.integration.haproxy_rig import SLOTS, Running, layout, running_haproxy, versions
from tests.integration.test_proxy import Upstream

from turnout.errors import RouterError
from turnout.routers.haproxy.config import Layout
from turnout.routers.haproxy.runtime import Runtime, word

ROUTE_MAP = "route.map"


@pytest.fixture
async def haproxy() -> AsyncIterator[Running]:
    async with running_haproxy() as made:
        yield made


@pytest.fixture
async def ups() -> AsyncIterator[list[Upstream]]:
    servers = [await Upstream(name).start() for name in ("a", "b", "c")]
    yield servers
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as made:
        yield made


async def test_the_client_parses_real_answers(haproxy: Running) -> None:
    states = await haproxy.runtime.servers_state()
    assert [(s.backend, s.server) for s in states] == [
        (f"web_p{p}", f"s{i}") for p in range(2) for i in range(SLOTS)
    ]
    assert all(s.state == "maint" and s.address == "127.0.0.1:1" for s in states)
    rows = await haproxy.runtime.stat()
    names = {(r.proxy, r.name) for r in rows}
    assert {("web", "FRONTEND"), ("web_p0", "BACKEND"), ("web_p0", "s0")} <= names
    server = next(r for r in rows if (r.proxy, r.name) == ("web_p1", "s2"))
    assert server.is_server and server.text("status") == "MAINT" and server.number("scur") == 0
    assert server.text("addr") == "127.0.0.1:1"
    frontend = next(r for r in rows if r.name == "FRONTEND")
    assert not frontend.is_server and frontend.number("req_tot") == 0
    assert await haproxy.runtime.maps() == []  # no map in this configuration
    master = await haproxy.process.master.processes()
    assert [p.kind for p in master] == ["master", "worker"]
    assert master[0].pid == haproxy.process.pid() and master[0].failed_reloads == 0


async def test_a_filled_slot_serves_a_real_upstream_and_is_counted(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    a = ups[0]
    assert (await client.get(haproxy.url)).status_code == 503  # no slot serves yet
    await haproxy.fill("web_p0", "s1", a.address)
    state = {s.server: s for s in await haproxy.runtime.servers_state("web_p0")}
    assert state["s1"].address == a.address and state["s1"].state == "ready" and state["s1"].up
    assert state["s0"].state == "maint"
    assert await versions(client, haproxy.url, 5) == ["a"] * 5
    rows = {(r.proxy, r.name): r for r in await haproxy.runtime.stat()}
    backend = rows["web_p0", "BACKEND"]  # counts the 503 it answered without a server too
    assert backend.number("req_tot") == 6 and backend.number("hrsp_5xx") == 1
    assert rows["web_p0", "s1"].number("hrsp_2xx") == 5
    assert rows["web_p0", "s1"].text("addr") == a.address
    with pytest.raises(RouterError, match=r"admin\.sock.*set server web_p0/s9 state ready.*No such server"):
        await haproxy.runtime.set_server_state("web_p0", "s9", "ready")
    with pytest.raises(RouterError, match="set server web_p0/s0 addr nowhere"):
        await haproxy.runtime.set_server_address("web_p0", "s0", "nowhere", 80)


async def test_a_drained_slot_finishes_its_request_and_takes_no_new_one(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    a, b, _ = ups
    await haproxy.fill("web_p0", "s0", a.address)
    await haproxy.fill("web_p0", "s1", b.address)
    held = asyncio.create_task(_held_on(client, haproxy, "s0"))
    await _until(lambda: _scur(haproxy, "s0"), lambda n: n == 1)
    await haproxy.runtime.set_server_state("web_p0", "s0", "drain")
    state = {s.server: s.state for s in await haproxy.runtime.servers_state("web_p0")}
    assert state["s0"] == "drain" and state["s1"] == "ready"
    assert await versions(client, haproxy.url, 6) == ["b"] * 6  # new requests avoid s0
    assert await _scur(haproxy, "s0") == 1  # while the held one is still there
    assert (await held).headers["x-version"] == "a"
    await _until(lambda: _scur(haproxy, "s0"), lambda n: n == 0)
    await haproxy.runtime.set_server_state("web_p0", "s0", "maint")
    state = {s.server: s.state for s in await haproxy.runtime.servers_state("web_p0")}
    assert state["s0"] == "maint"
    assert await versions(client, haproxy.url, 4) == ["b"] * 4


async def _held_on(client: httpx.AsyncClient, haproxy: Running, slot: str) -> httpx.Response:
    """A one-second request, sent until it lands on `slot` (round robin takes turns)."""
    for _ in range(SLOTS * 2):
        before = await _stot(haproxy, slot)
        answer = client.get(f"{haproxy.url}/sleep?s=1")
        task = asyncio.ensure_future(answer)
        await asyncio.sleep(0.1)
        if await _stot(haproxy, slot) > before:
            return await task
        await task
    raise AssertionError(f"no request landed on {slot}")


async def _stot(haproxy: Running, slot: str) -> int:
    rows = await haproxy.runtime.stat()
    return next(r for r in rows if (r.proxy, r.name) == ("web_p0", slot)).number("stot")


async def _scur(haproxy: Running, slot: str) -> int:
    rows = await haproxy.runtime.stat()
    return next(r for r in rows if (r.proxy, r.name) == ("web_p0", slot)).number("scur")


async def _until(read: Callable[[], Awaitable[int]], good: Callable[[int], bool],
                 within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if good(value):
            return
        assert time.monotonic() < deadline, f"still {value} after {within}s"
        await asyncio.sleep(0.02)


async def test_a_refilled_slot_sends_to_its_new_address_only(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    a, b, _ = ups
    await haproxy.fill("web_p0", "s0", a.address)
    assert await versions(client, haproxy.url, 3) == ["a"] * 3  # HAProxy keeps a connection to a
    await haproxy.runtime.set_server_state("web_p0", "s0", "maint")
    await haproxy.fill("web_p0", "s0", b.address)
    assert await versions(client, haproxy.url, 6) == ["b"] * 6


def _mapped(folder: Path, port: int) -> Layout:
    """Pools chosen by the key `route` of a map (what the Lua's map does, in one line)."""
    (folder / ROUTE_MAP).write_text("route web_p0\nother x\n")
    pick = f"use_backend %[str(route),map('{folder / ROUTE_MAP}',web_p0)]"
    return layout(folder, port, lines=(pick,))


async def test_a_map_swap_is_atomic_and_routes_at_once(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    a, b, _ = ups
    async with running_haproxy(_mapped) as haproxy:
        runtime, name = haproxy.runtime, str(haproxy.folder / ROUTE_MAP)
        await haproxy.fill("web_p0", "s0", a.address)
        await haproxy.fill("web_p1", "s0", b.address)
        assert await versions(client, haproxy.url, 3) == ["a"] * 3
        [info] = await runtime.maps()
        assert info.file == name and info.entries == 2
        version = await runtime.prepare_map(name)
        await runtime.add_map(name, version, {"route": "web_p1", "k;1": "v\\1"})
        # prepared, not committed: requests and readers see the old entries only
        assert await runtime.map_entries(name) == [("route", "web_p0"), ("other", "x")]
        assert await runtime.map_entries(name, version) == [("route", "web_p1"), ("k;1", "v\\1")]
        assert await versions(client, haproxy.url, 3) == ["a"] * 3
        await runtime.commit_map(name, version)
        assert await runtime.map_entries(name) == [("route", "web_p1"), ("k;1", "v\\1")]
        assert await versions(client, haproxy.url, 3) == ["b"] * 3
        many = {f"user-{i:05d}": f"web_p{i % 2}" for i in range(3000)} | {"route": "web_p0"}
        swapped = await runtime.swap_map(name, many)  # several payloads, one commit
        assert swapped > version
        assert dict(await runtime.map_entries(name)) == many
        assert (await runtime.maps())[0].current == swapped
        assert await versions(client, haproxy.url, 3) == ["a"] * 3
        with pytest.raises(RouterError, match="Version number out of range"):
            await runtime.commit_map(name, swapped + 5)
        with pytest.raises(RouterError, match="Unknown map"):
            await runtime.map_entries(str(haproxy.folder / "none.map"))


async def test_an_unreachable_socket_is_a_router_error_naming_it_and_the_command(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "absent.sock", timeout=1.0)
    with pytest.raises(RouterError, match=r"absent\.sock: 'show stat' failed"):
        await runtime.stat()
    silent = tmp_path / "silent.sock"
    released = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        await released.wait()
        writer.close()

    server = await asyncio.start_unix_server(never_answer, path=str(silent))
    try:
        with pytest.raises(RouterError, match=r"silent\.sock: 'show info' got no whole answer within 0.2s"):
            await Runtime(silent, timeout=0.2).command("show info")
    finally:
        released.set()
        server.close()
        await server.wait_closed()
    with pytest.raises(RouterError, match="not one line"):
        await runtime.command("show info\nshutdown frontend web")


def test_arguments_are_escaped_as_haproxy_reads_them() -> None:
    assert word("web_p0") == "web_p0"
    assert word("a b;c\\d") == "a\\ b\\;c\\\\d"
    for bad in ("", "a\nb"):
        with pytest.raises(RouterError):
            word(bad)
