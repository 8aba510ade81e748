"""One suite for every router: what the service and the engine rely on through `Router`.

`ALL_ROUTERS` lists a rig per router (in the manner of kopf's parametrised storages): the
router adapter, another adapter over the same router (a restarted control plane), and a
way to send users' requests through it and to hold one in flight. The builtin router runs
as its real process in front of real upstreams on 127.0.0.1; the fake is the one unit
tests use, and it must pass the same suite. A router joins by adding its rig.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from tests.integration.haproxy_rig import need_haproxy, users_config
from tests.integration.test_proxy import Upstream

from turnout import procs
from turnout.errors import RouterError
from turnout.routers.base import Capability, Counters, Router, RouterHasNewer
from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, Pool, RoutingTable
from turnout.testing import FakeRouter, traffic

HOLD_SECONDS = 1.0  # how long a held request stays in flight


class Rig(Protocol):
    router: Router

    def reopen(self) -> Router:
        """Another adapter over the same router, as a restarted control plane builds it."""
        ...

    async def backend(self, backend_id: str) -> Backend:
        """A backend that answers HTTP, named `backend_id`."""
        ...

    async def send(self, requests: int) -> None:
        """`requests` users' requests through the router, each answered."""
        ...

    def hold(self, backend_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One request in flight to `backend_id` (the only backend of the table) meanwhile."""
        ...

    async def close(self) -> None: ...


class BuiltinRig:
    """The builtin proxy as a real process, with real upstreams."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="trc-"))  # short: unix socket paths
        self.router = self._adapter()
        self.upstreams: list[Upstream] = []
        self.adapters: list[BuiltinRouter] = [self.router]

    def _adapter(self) -> BuiltinRouter:
        return BuiltinRouter(self.folder / "router", listen="127.0.0.1:0",
                             preview_listen="127.0.0.1:0")

    def reopen(self) -> Router:
        adapter = self._adapter()
        self.adapters.append(adapter)
        return adapter

    async def backend(self, backend_id: str) -> Backend:
        upstream = await Upstream(backend_id).start()
        self.upstreams.append(upstream)
        return Backend(id=backend_id, address=upstream.address)

    async def _url(self) -> str:
        listen = (await self.router.describe()).listen
        return f"http://{listen}"

    async def send(self, requests: int) -> None:
        url = await self._url()
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            for i in range(requests):
                answer = await client.get(f"{url}/", headers={"X-User-Id": f"user-{i}"})
                assert answer.status_code == 200

    @contextlib.asynccontextmanager
    async def hold(self, backend_id: str) -> AsyncIterator[None]:
        url = await self._url()
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            held = asyncio.create_task(client.get(f"{url}/sleep?s={HOLD_SECONDS}"))
            await eventually(lambda: self._in_flight(backend_id))
            try:
                yield
            finally:
                assert (await held).status_code == 200

    async def _in_flight(self, backend_id: str) -> bool:
        return (await self.router.stats()).in_flight.get(backend_id, 0) > 0

    async def close(self) -> None:
        await self.router.stop()
        for adapter in self.adapters:
            await adapter.aclose()
        for upstream in self.upstreams:
            await upstream.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class FakeRig:
    """The fake router; "requests" are counted into the pools of its table by weight."""

    def __init__(self) -> None:
        self.fake = FakeRouter(running=False)
        self.router: Router = self.fake

    def reopen(self) -> Router:
        return self.fake.reopen()

    async def backend(self, backend_id: str) -> Backend:
        return Backend(id=backend_id, address="127.0.0.1:9")

    async def send(self, requests: int) -> None:
        table = await self.fake.table()
        assert table is not None, "no table: nothing would answer"
        total = sum(p.weight for p in table.pools if p.backends)
        for pool in table.pools:
            share = requests * pool.weight // total if pool.backends else 0
            if share:
                self.fake.count(pool.revision, traffic(share))

    @contextlib.asynccontextmanager
    async def hold(self, backend_id: str) -> AsyncIterator[None]:
        self.fake.busy.add(backend_id)
        try:
            yield
        finally:
            self.fake.busy.discard(backend_id)

    async def close(self) -> None:
        await self.fake.aclose()


class HaproxyRig(BuiltinRig):
    """HAProxy as a real master-worker process, steered by `HaproxyRouter`, real upstreams."""

    def __init__(self) -> None:
        need_haproxy()
        super().__init__()

    def _adapter(self) -> Any:
        from turnout.routers.haproxy.router import HaproxyRouter  # the other rigs never need it

        return HaproxyRouter(self.folder / "router", service="web", listen="127.0.0.1:0",
                             preview_listen="127.0.0.1:0", slots=4)


class AdoptedRig(BuiltinRig):
    """An HAProxy "the user" runs from a file of their own, one backend of it adopted
    (`AdoptedHaproxy`): the router runs before turnout ensures it, and after it stops. Its
    frontend and backend share a name, as users' often do (asked for `show stat web`, HAProxy
    answers with the frontend's rows)."""

    starts_router = False

    def __init__(self) -> None:
        need_haproxy()
        from turnout.routers.haproxy.process import HaproxyProcess

        self.port = procs.free_port("127.0.0.1")
        super().__init__()
        self.users = HaproxyProcess(self.folder / "users")

    async def start(self) -> None:
        self.users.folder.mkdir(parents=True, exist_ok=True)
        self.users.config_path.write_text(users_config(self.users.folder, port=self.port,
                                                       backend="web"))
        await self.users.start()

    def _adapter(self) -> Any:
        from turnout.routers.haproxy.adopted import AdoptedHaproxy
        from turnout.spec.routing import Adopt

        adopt = Adopt(socket=str(self.folder / "users" / "admin.sock"), backend="web",
                      config=str(self.folder / "users" / "haproxy.cfg"))
        return AdoptedHaproxy(self.folder / "router", adopt, listen=f"127.0.0.1:{self.port}", slots=4)

    async def close(self) -> None:
        await self.users.stop()
        await super().close()


ALL_ROUTERS: dict[str, Callable[[], Rig]] = {
    "fake": FakeRig, "builtin": BuiltinRig, "haproxy": HaproxyRig, "adopted-haproxy": AdoptedRig,
}


@pytest.fixture(params=list(ALL_ROUTERS))
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    made = ALL_ROUTERS[request.param]()
    try:
        start = getattr(made, "start", None)
        if start is not None:  # a router the user runs is there before turnout
            await start()
        yield made
    finally:
        await made.close()


def starts_router(rig: Rig) -> bool:
    """Whether `ensure_running` and `stop` start and stop the router (not one the user runs)."""
    return bool(getattr(rig, "starts_router", True))


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def table(rig: Rig, generation: int, *pools: tuple[str, int, tuple[str, ...]]) -> RoutingTable:
    """A table of (revision, weight, backend ids) pools, with answering backends."""
    made = []
    for revision, weight, ids in pools:
        backends = tuple([await rig.backend(i) for i in ids])
        made.append(Pool(revision=revision, version=revision, weight=weight, backends=backends))
    return RoutingTable(generation=generation, pools=tuple(made))


def flag_state(*names: str, revision: int, enabled: bool = True) -> dict[str, Any]:
    features = [{"name": n, "enabled": enabled,
                 "strategies": [{"name": "default", "parameters": {}}]} for n in names]
    return {"version": 2, "features": features, "segments": [], "meta": {"revision": revision}}


def needs(rig: Rig, capability: Capability) -> None:
    if capability not in rig.router.capabilities:
        pytest.skip(f"this router does not declare {capability}")


# -- lifecycle ---------------------------------------------------------------------------
async def test_a_router_runs_once_ensured_and_every_adapter_sees_it(rig: Rig) -> None:
    before = await rig.router.describe()
    assert before.running is not starts_router(rig) and before.kind
    await rig.router.ensure_running()
    await rig.router.ensure_running()  # a running router is left as it is
    after = await rig.router.describe()
    assert after.running and after.kind == before.kind
    assert (await rig.reopen().describe()).running
    assert str(after).startswith(f"{after.kind} router (running")


async def test_a_stopped_router_answers_nothing_and_stopping_again_is_no_error(rig: Rig) -> None:
    await rig.router.ensure_running()
    if not starts_router(rig):  # the user's: stopping it leaves it running, the table in effect
        kept = await table(rig, 1, ("old", 100, ("old-0",)))
        await rig.router.apply(kept)
        await rig.router.stop()
        assert (await rig.router.describe()).running and await rig.router.table() == kept
        await rig.send(3)
        return
    await rig.router.stop()
    assert not (await rig.router.describe()).running
    for call in (rig.router.table(), rig.router.stats(),
                 rig.router.apply(RoutingTable(generation=1))):
        with pytest.raises(RouterError):
            await call
    await rig.router.stop()


async def test_capabilities_are_declared_and_the_preview_is_told_only_with_its_capability(
    rig: Rig,
) -> None:
    capabilities = rig.router.capabilities
    assert isinstance(capabilities, frozenset)
    assert all(isinstance(c, Capability) for c in capabilities)
    assert rig.reopen().capabilities == capabilities  # fixed for the kind
    await rig.router.ensure_running()
    info = await rig.router.describe()
    assert (info.preview is not None) == (Capability.PREVIEW in capabilities)


# -- tables ------------------------------------------------------------------------------
async def test_a_table_is_in_effect_on_return_and_read_back_whole(rig: Rig) -> None:
    await rig.router.ensure_running()
    assert await rig.router.table() is None
    first = await table(rig, 1, ("new", 10, ("new-0",)), ("old", 90, ("old-0", "old-1")))
    await rig.router.apply(first)
    assert await rig.router.table() == first
    assert (await rig.router.stats()).generation == 1
    assert await rig.reopen().table() == first  # what a restarted control plane reads


async def test_an_older_generation_is_refused_and_changes_nothing(rig: Rig) -> None:
    await rig.router.ensure_running()
    second = await table(rig, 2, ("old", 100, ("old-0",)))
    await rig.router.apply(second)
    with pytest.raises(RouterError):
        await rig.router.apply(await table(rig, 1, ("new", 100, ("new-0",))))
    assert await rig.router.table() == second
    again = second.model_copy(update={"pools": ()})
    await rig.router.apply(again)  # the same generation again is taken
    assert await rig.router.table() == again


async def test_the_table_and_flags_outlive_a_stop(rig: Rig) -> None:
    await rig.router.ensure_running()
    kept = await table(rig, 3, ("old", 100, ("old-0",)))
    await rig.router.apply(kept)
    if Capability.FLAGS in rig.router.capabilities:
        await rig.router.set_flags(flag_state("checkout", revision=4), revision=4,
                                   evaluate=["checkout"], header="X-Flags")
    await rig.router.stop()
    restarted = rig.reopen()
    await restarted.ensure_running()
    assert await restarted.table() == kept
    if Capability.FLAGS in rig.router.capabilities:
        with pytest.raises(RouterHasNewer) as refused:
            await restarted.set_flags(flag_state("checkout", revision=3), revision=3)
        assert refused.value.revision == 4


# -- counters and drains -----------------------------------------------------------------
async def test_requests_are_counted_for_the_revision_that_served_them(rig: Rig) -> None:
    await rig.router.ensure_running()
    await rig.router.apply(await table(rig, 1, ("new", 0, ("new-0",)), ("old", 100, ("old-0",))))
    before = await rig.router.stats()
    await rig.send(6)
    after = await rig.router.stats()
    seen = {r: c.minus(before.revisions.get(r, Counters())) for r, c in after.revisions.items()}
    assert seen["old"].requests == 6 and seen["old"].error_rate == 0.0
    assert seen.get("new", Counters()).requests == 0
    if Capability.LATENCY in rig.router.capabilities:
        assert sum(seen["old"].latency) == 6  # each answer timed
    else:
        assert sum(seen["old"].latency) == 0  # none timed: the spec check refuses p99 gates
    assert after.generation == 1


async def test_a_backend_with_a_request_in_flight_is_not_drained(rig: Rig) -> None:
    needs(rig, Capability.DRAIN)
    await rig.router.ensure_running()
    await rig.router.apply(await table(rig, 1, ("old", 100, ("old-0",))))
    assert await rig.router.drained("old-0") is True
    async with rig.hold("old-0"):
        assert await rig.router.drained("old-0") is False
        assert await rig.router.drained("elsewhere-0") is True  # nothing was sent there
    await eventually(lambda: _drained(rig.router, "old-0"))


async def _drained(router: Router, backend_id: str) -> bool:
    return await router.drained(backend_id) is True


# -- flags -------------------------------------------------------------------------------
async def test_flags_are_evaluated_with_their_revision_and_an_older_one_is_refused(
    rig: Rig,
) -> None:
    needs(rig, Capability.FLAGS)
    await rig.router.ensure_running()
    await rig.router.set_flags(flag_state("checkout", revision=1), revision=1,
                               evaluate=["checkout"], header="X-Flags")
    cohorts = (await rig.router.stats()).cohorts
    assert {"checkout:on", "checkout:off"} <= set(cohorts)
    # left out, the flags evaluated and the header stay; the same revision again is taken
    await rig.router.set_flags(flag_state("checkout", revision=2, enabled=False), revision=2)
    await rig.router.set_flags(flag_state("checkout", revision=2, enabled=False), revision=2)
    assert {"checkout:on", "checkout:off"} <= set((await rig.router.stats()).cohorts)
    with pytest.raises(RouterHasNewer) as refused:
        await rig.router.set_flags(flag_state("checkout", revision=1), revision=1)
    assert refused.value.revision == 2


async def test_a_malformed_flag_state_is_refused_and_changes_nothing(rig: Rig) -> None:
    needs(rig, Capability.FLAGS)
    await rig.router.ensure_running()
    await rig.router.set_flags(flag_state("checkout", revision=5), revision=5,
                               evaluate=["checkout"], header="X-Flags")
    with pytest.raises(RouterError):
        await rig.router.set_flags({"features": 7, "meta": {"revision": 6}}, revision=6)
    with pytest.raises(RouterError):  # a revision that is not the state's own
        await rig.router.set_flags(flag_state("checkout", revision=7), revision=8)
    with pytest.raises(RouterHasNewer) as refused:
        await rig.router.set_flags(flag_state("checkout", revision=4), revision=4)
    assert refused.value.revision == 5
