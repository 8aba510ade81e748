"""A flag change reaches the service's router and a connected SDK client within a second.

The service's builtin router runs for a spec folder; `turnout server` runs in that folder,
so it pushes every new revision of the flags to the router. 100 changes are written to
the flag store from this process (as the CLI or the admin API would); for each, the clock
runs until both the client's evaluation and the router's flags in effect show it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.e2e.sdk.server_proc import ServerProcess
from turnout.flags import FlagState, evaluate
from turnout.flags.client import FlagClient
from turnout.flags.store import FlagStore
from turnout.routers.builtin import BuiltinRouter

pytestmark = pytest.mark.serial  # p99 of the propagation under 1 s
CHANGES = 100
FLAG = {"name": "new-checkout", "enabled": True, "strategies": [{"name": "default"}]}


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[BuiltinRouter]:
    (tmp_path / "turnout.yaml").write_text(
        f"service: shop\nlisten: 127.0.0.1:{free_port()}\nrun: {{command: [app]}}\n"
    )
    router = BuiltinRouter(tmp_path / ".turnout" / "router", listen=f"127.0.0.1:{free_port()}",
                           preview_listen=None)
    await router.ensure_running()
    yield router
    await router.stop()
    await router.aclose()


def router_says(flags: dict[str, object], want: bool) -> bool:
    state = FlagState.from_json(flags["state"])
    return evaluate(state, "new-checkout", {"userId": "u1"}).enabled is want


async def test_changes_reach_the_router_and_the_client_within_a_second(
    router: BuiltinRouter, tmp_path: Path
) -> None:
    store = FlagStore.open(f"sqlite:///{tmp_path / '.turnout' / 'state.db'}")
    token = store.create_token("propagation", "client")
    store.create(FLAG, who="setup")
    state = store.state()
    await router.set_flags(state, evaluate=["new-checkout"], header="X-Turnout-Flags",
                           revision=state["meta"]["revision"])
    server = ServerProcess.start(f"sqlite:///{tmp_path / '.turnout' / 'state.db'}", cwd=tmp_path)
    client = FlagClient(server.url, token)
    client.start()
    latencies: list[float] = []
    try:
        assert client.wait_for_state(5.0)
        await asyncio.sleep(0.2)
        for i in range(CHANGES):
            want = i % 2 == 1
            started = time.perf_counter()
            store.set_enabled("new-checkout", want, who="propagation")
            deadline = started + 3.0
            while time.perf_counter() < deadline:
                if client.is_enabled("new-checkout", {"userId": "u1"}) is want and router_says(
                    await router.flags(), want
                ):
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError(f"change {i} did not reach both within 3 s")
            latencies.append(time.perf_counter() - started)
    finally:
        client.close()
        assert server.stop() == 0
        store.close()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"\nrouter + client propagation over {CHANGES} changes: "
          f"p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert p99 < 1.0
