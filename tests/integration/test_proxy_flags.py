"""Router-side toggles in the builtin proxy, as a real process in front of real upstreams.

The proxy evaluates flags per request for the user key, forwards the results in a header
the client cannot forge, counts each flag's on and off cohorts apart, keeps its settings
across a killed worker, takes new states from `push_to_router`, and refuses (409) a state
older than the flag revision in effect, before and after a worker restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.test_proxy import (  # fixtures are used by name
    Running,
    Upstream,
    pool,
    proxy,
    state_dir,
    ups,
)

from turnout.errors import RouterError
from turnout.flags import FlagState, evaluate
from turnout.flags.push import RouterHasNewer, push_to_router
from turnout.routers.base import Counters
from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, Pool, RoutingTable, UserKey

__all__ = ["proxy", "state_dir", "ups"]
HEADER = "X-Turnout-Flags"


def flag(name: str, *, enabled: bool = True, rollout: int = 30,
         users: tuple[str, ...] = ("alice", "bob")) -> dict[str, Any]:
    strategies: list[dict[str, Any]] = [
        {"name": "flexibleRollout",
         "parameters": {"rollout": str(rollout), "stickiness": "default", "groupId": name}},
    ]
    if users:
        strategies.insert(0, {"name": "userWithId", "parameters": {"userIds": ",".join(users)}})
    return {"name": name, "enabled": enabled, "strategies": strategies}


def state(*features: dict[str, Any], revision: int = 1) -> dict[str, Any]:
    return {"version": 2, "features": list(features), "segments": [],
            "meta": {"revision": revision}}


def keyed_table(*pools: Pool) -> RoutingTable:
    return RoutingTable(generation=1, pools=pools,
                        user_key=UserKey(header="X-User-Id", cookie="uid"))


async def seen_flags(client: httpx.AsyncClient, url: str, user: str | None = None,
                     **headers: str) -> list[str]:
    """The flags header values the upstream received (via its `/headers` echo)."""
    if user is not None:
        headers["X-User-Id"] = user
    response = await client.get(f"{url}/headers", headers=headers)
    assert response.status_code == 200
    lines = response.text.splitlines()
    return [v for n, _, v in (line.partition(": ") for line in lines) if n.lower() == HEADER.lower()]


def expected(compiled: FlagState, names: list[str], user: str) -> str:
    context = {"userId": user, "sessionId": user, "remoteAddress": "127.0.0.1"}
    return ", ".join(
        f"{n}={'on' if evaluate(compiled, n, context).enabled else 'off'}" for n in names
    )


async def test_header_matches_the_engine_for_500_users(proxy: Running, ups: list[Upstream]) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    doc = state(flag("checkout"), flag("banner", rollout=50, users=()))
    names = ["checkout", "banner"]
    await proxy.router.set_flags(doc, evaluate=names, header=HEADER, revision=1)
    compiled = FlagState.from_json(doc)
    users = ["alice", "bob", *(f"user-{i}" for i in range(498))]
    on = 0
    async with httpx.AsyncClient(timeout=5) as client:
        for user in users:
            want = expected(compiled, names, user)
            assert await seen_flags(client, proxy.url, user) == [want], user
            on += want.startswith("checkout=on")
        # the cookie is the user key too; a request without a key still gets results
        cookie = await client.get(f"{proxy.url}/headers", headers={"Cookie": "uid=alice"})
        assert f"{HEADER}: {expected(compiled, names, 'alice')}" in cookie.text
        keyless = await seen_flags(client, proxy.url)
        assert len(keyless) == 1
    assert 0.22 * 500 < on < 0.38 * 500, on  # 2 listed users + about 30% of the rest
    on += 1 + keyless[0].startswith("checkout=on")  # alice by cookie, and the keyless one
    cohorts = (await proxy.router.stats()).cohorts
    assert cohorts["checkout:on"].requests == on
    assert cohorts["checkout:off"].requests == 502 - on
    assert cohorts["banner:on"].requests + cohorts["banner:off"].requests == 502


async def test_a_client_sent_flags_header_is_replaced(proxy: Running, ups: list[Upstream]) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    await proxy.router.set_flags(state(flag("checkout", rollout=0)), evaluate=["checkout"],
                                 header=HEADER, revision=1)
    async with httpx.AsyncClient(timeout=5) as client:
        forged = await seen_flags(client, proxy.url, "mallory", **{HEADER.lower(): "checkout=on"})
        assert forged == ["checkout=off"]
        assert await seen_flags(client, proxy.url, "alice", **{HEADER: "x=on"}) == ["checkout=on"]


class FailWhenOn:
    """An upstream answering 500 to requests whose flags header turns `checkout` on."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> FailWhenOn:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                status = b"500 Internal Server Error" if b"checkout=on" in head else b"200 OK"
                writer.write(b"HTTP/1.1 %s\r\nContent-Length: 2\r\n\r\nok" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def failing() -> AsyncIterator[FailWhenOn]:
    server = await FailWhenOn().start()
    yield server
    await server.close()


async def test_cohorts_count_requests_and_5xx_apart(proxy: Running, failing: FailWhenOn) -> None:
    backends = (Backend(id="app-0", address=failing.address),)
    await proxy.router.apply(keyed_table(Pool(revision="app", version="app", weight=100,
                                              backends=backends)))
    doc = state(flag("checkout", rollout=40, users=()))
    await proxy.router.set_flags(doc, evaluate=["checkout"], header=HEADER, revision=1)
    compiled = FlagState.from_json(doc)
    statuses: dict[str, list[int]] = {"on": [], "off": []}
    async with httpx.AsyncClient(timeout=5) as client:
        for i in range(200):
            user = f"u{i}"
            response = await client.get(f"{proxy.url}/", headers={"X-User-Id": user})
            cohort = "on" if evaluate(compiled, "checkout", {"userId": user}).enabled else "off"
            statuses[cohort].append(response.status_code)
    assert set(statuses["on"]) == {500} and set(statuses["off"]) == {200}
    stats = await proxy.router.stats()
    on, off = stats.cohorts["checkout:on"], stats.cohorts["checkout:off"]
    assert (on.requests, on.responses_5xx) == (len(statuses["on"]), len(statuses["on"]))
    assert (off.requests, off.responses_5xx) == (len(statuses["off"]), 0)
    assert sum(on.latency) == on.requests and sum(off.latency) == off.requests
    assert on.error_rate == 1.0 and off.error_rate == 0.0
    assert stats.revisions["app"].requests == 200


async def test_switching_a_flag_off_holds_for_the_very_next_request(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    await proxy.router.set_flags(state(flag("checkout")), evaluate=["checkout"], header=HEADER,
                                 revision=1)
    async with httpx.AsyncClient(timeout=5) as client:
        for revision in range(2, 12):  # the same keep-alive connection throughout
            enabled = revision % 2 == 1
            doc = state(flag("checkout", enabled=enabled), revision=revision)
            await proxy.router.set_flags(doc, evaluate=["checkout"], header=HEADER,
                                         revision=revision)
            want = "checkout=on" if enabled else "checkout=off"
            assert await seen_flags(client, proxy.url, "alice") == [want]
        # the same revision again, forwarded in another header
        await proxy.router.set_flags(state(flag("checkout"), revision=11), evaluate=["checkout"],
                                     header="X-F", revision=11)
        assert await seen_flags(client, proxy.url, "alice") == []
        response = await client.get(f"{proxy.url}/headers", headers={"X-User-Id": "alice"})
        assert "X-F: checkout=on" in response.text


async def test_flags_survive_a_killed_worker(proxy: Running, ups: list[Upstream],
                                             state_dir: Path) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    doc = state(flag("checkout"), flag("banner", enabled=False))
    await proxy.router.set_flags(doc, evaluate=["banner", "checkout"], header=HEADER, revision=1)
    assert json.loads((state_dir / "flags.json").read_text())["evaluate"] == ["banner", "checkout"]
    before = await proxy.router.health()
    os.kill(int(str(before["pid"])), signal.SIGKILL)
    for _ in range(200):
        await asyncio.sleep(0.025)
        try:
            if (await proxy.router.health())["pid"] != before["pid"]:
                break
        except RouterError:
            continue
    settings = await proxy.router.flags()
    assert settings == {"state": doc, "revision": 1, "evaluate": ["banner", "checkout"],
                        "header": HEADER}
    async with httpx.AsyncClient(timeout=5) as client:
        assert await seen_flags(client, proxy.url, "bob") == ["banner=off, checkout=on"]
    assert (await proxy.router.stats()).cohorts["checkout:on"].requests == 1  # a new worker


async def test_bad_flag_settings_are_refused_and_change_nothing(
    proxy: Running, ups: list[Upstream], state_dir: Path
) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    await proxy.router.set_flags(state(flag("checkout")), evaluate=["checkout"], header=HEADER,
                                 revision=1)
    saved = (state_dir / "flags.json").read_bytes()
    current = await proxy.router.flags()
    good = {"state": state(flag("checkout", enabled=False), revision=2), "revision": 2}
    bad_bodies: list[Any] = [
        b"{not json", [], {"evaluate": ["checkout"], "revision": 2}, {**good, "extra": 1},
        {"state": {"features": "none"}, "revision": 2}, {"state": 3, "revision": 2},
        {**good, "evaluate": "checkout"},
        {**good, "evaluate": ["a,b"]}, {**good, "evaluate": ["x", "x"]},
        {**good, "header": "Content-Length"}, {**good, "header": "bad header"},
        {"state": good["state"]}, {**good, "revision": "2"}, {**good, "revision": -1},
        {**good, "revision": True}, {**good, "revision": 3},  # not the state's meta.revision
    ]
    transport = httpx.AsyncHTTPTransport(uds=str(state_dir / "admin.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as admin:
        for body in bad_bodies:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = await admin.put("/flags", content=content)
            assert response.status_code == 400, body
            assert "invalid flag settings" in response.json()["error"]
    with pytest.raises(RouterError, match="400"):
        await proxy.router.set_flags(good["state"], evaluate=["checkout"], header="Host",
                                     revision=2)
    assert await proxy.router.flags() == current
    assert (state_dir / "flags.json").read_bytes() == saved
    async with httpx.AsyncClient(timeout=5) as client:
        assert await seen_flags(client, proxy.url, "alice") == ["checkout=on"]


async def test_without_evaluated_flags_no_header_is_added(
    proxy: Running, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    async with httpx.AsyncClient(timeout=5) as client:
        assert await seen_flags(client, proxy.url, "alice") == []
        await proxy.router.set_flags(state(flag("checkout")), evaluate=[], header=HEADER,
                                     revision=1)
        assert await seen_flags(client, proxy.url, "alice") == []
        # a client still cannot hand the application a flags header of its own
        assert await seen_flags(client, proxy.url, "alice", **{HEADER: "checkout=on"}) == []
    assert (await proxy.router.stats()).cohorts == {}
    # once a flag is evaluated, both its cohorts are listed before any request
    await proxy.router.set_flags(state(flag("checkout")), evaluate=["checkout"], header=HEADER,
                                 revision=1)
    assert (await proxy.router.stats()).cohorts == {"checkout:on": Counters(),
                                                   "checkout:off": Counters()}


@pytest.fixture
def spec_dir() -> Iterator[Path]:
    """A spec folder: its turnout.yaml names the router that flag pushes go to (builtin)."""
    path = Path(tempfile.mkdtemp(prefix="tf-"))  # short: unix socket paths are limited
    (path / "turnout.yaml").write_text("service: shop\nrun: {command: [app]}\nrouter: builtin\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_push_to_router_sends_the_state_and_keeps_the_settings(
    spec_dir: Path, ups: list[Upstream]
) -> None:
    old, _, _ = ups
    router_dir = spec_dir / ".turnout" / "router"
    router = BuiltinRouter(router_dir, listen="127.0.0.1:0", preview_listen=None)
    await router.ensure_running()
    try:
        port = int(str((await router.health())["listen"]).rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        await router.apply(keyed_table(pool("old", 100, old)))
        await router.set_flags(state(flag("checkout")), evaluate=["checkout"], header="X-F",
                               revision=1)
        off = state(flag("checkout", enabled=False), revision=2)
        assert await asyncio.to_thread(push_to_router, spec_dir, off)
        assert await router.flags() == {"state": off, "revision": 2, "evaluate": ["checkout"],
                                        "header": "X-F"}
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{url}/headers", headers={"X-User-Id": "alice"})
            assert "X-F: checkout=off" in response.text
        with pytest.raises(RouterError, match="refused"):
            await asyncio.to_thread(push_to_router, spec_dir, {"features": 7, "meta": {"revision": 3}})
        # an older state than the one in effect: refused, and the router's revision is told
        with pytest.raises(RouterHasNewer) as caught:
            await asyncio.to_thread(push_to_router, spec_dir, state(flag("checkout"), revision=1))
        assert caught.value.revision == 2
        assert (await router.flags())["state"] == off
    finally:
        await router.stop()
        await router.aclose()
    # the router is gone: pushing is a no-op, with or without a socket file left behind
    assert not push_to_router(spec_dir, off)
    (router_dir / "admin.sock").unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(router_dir / "admin.sock"))
    assert not push_to_router(spec_dir, off)
    assert not push_to_router(spec_dir / "elsewhere", off)


async def restart_worker(router: BuiltinRouter) -> None:
    """SIGKILL the proxy's worker and wait until its supervisor has a new one answering."""
    before = await router.health()
    os.kill(int(str(before["pid"])), signal.SIGKILL)
    for _ in range(400):
        await asyncio.sleep(0.025)
        try:
            if (await router.health())["pid"] != before["pid"]:
                return
        except RouterError:
            continue
    raise AssertionError("no new proxy worker within 10 s")


async def put_flags(state_dir: Path, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(state_dir / "admin.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as admin:
        return await admin.put("/flags", content=json.dumps(body).encode())


async def test_an_older_flag_revision_is_refused_and_the_newer_state_stays(
    proxy: Running, ups: list[Upstream], state_dir: Path
) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    newer = state(flag("checkout", rollout=100, users=()), revision=7)
    older = state(flag("checkout", enabled=False), revision=6)
    await proxy.router.set_flags(newer, evaluate=["checkout"], header=HEADER, revision=7)
    with pytest.raises(RouterError, match="409"):
        await proxy.router.set_flags(older, evaluate=["checkout"], header=HEADER, revision=6)
    refused = await put_flags(state_dir, {"state": older, "revision": 6})
    assert refused.status_code == 409
    assert refused.json()["revision"] == 7 and "older" in refused.json()["error"]
    # the same revision again is taken: here, to evaluate the flag under another header
    await proxy.router.set_flags(newer, evaluate=["checkout"], header="X-F", revision=7)
    await proxy.router.set_flags(newer, evaluate=["checkout"], header=HEADER, revision=7)
    async with httpx.AsyncClient(timeout=5) as client:
        assert await seen_flags(client, proxy.url, "carol") == ["checkout=on"]
        await restart_worker(proxy.router)
        assert (await proxy.router.flags())["revision"] == 7
        refused = await put_flags(state_dir, {"state": older, "revision": 6})
        assert refused.status_code == 409 and refused.json()["revision"] == 7
        assert await seen_flags(client, proxy.url, "carol") == ["checkout=on"]
        assert json.loads((state_dir / "flags.json").read_text())["revision"] == 7
        newest = state(flag("checkout", enabled=False), revision=8)
        await proxy.router.set_flags(newest, evaluate=["checkout"], header=HEADER, revision=8)
        assert await seen_flags(client, proxy.url, "carol") == ["checkout=off"]


async def test_settings_saved_without_a_revision_load_as_revision_zero(
    proxy: Running, ups: list[Upstream], state_dir: Path
) -> None:
    old, _, _ = ups
    await proxy.router.apply(keyed_table(pool("old", 100, old)))
    doc = {"version": 2, "features": [flag("checkout", rollout=100, users=())], "segments": []}
    (state_dir / "flags.json").write_text(json.dumps(
        {"state": doc, "evaluate": ["checkout"], "header": HEADER}))
    await restart_worker(proxy.router)
    assert await proxy.router.flags() == {"state": doc, "revision": 0, "evaluate": ["checkout"],
                                          "header": HEADER}
    async with httpx.AsyncClient(timeout=5) as client:
        assert await seen_flags(client, proxy.url, "dave") == ["checkout=on"]
