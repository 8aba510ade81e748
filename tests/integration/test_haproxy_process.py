"""HAProxy's process as `turnout.routers.haproxy.process` runs it, for real on 127.0.0.1:
started detached with owner-only sockets and a pid file another command trusts, configurations
HAProxy refuses kept out, reloads that keep the slots and drop no request, soft stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from tests.integration.haproxy_rig import Running, layout, running_haproxy, versions
from tests.integration.test_proxy import Upstream

from turnout import procs
from turnout.demo.load import Load
from turnout.errors import RouterError
from turnout.routers.haproxy.config import Slot, render
from turnout.routers.haproxy.process import STOP_SECONDS, HaproxyProcess

RELOADS = 100
RATE = 200.0  # requests a second during the reloads


@pytest.fixture
async def haproxy() -> AsyncIterator[Running]:
    async with running_haproxy() as made:
        yield made


@pytest.fixture
async def ups() -> AsyncIterator[list[Upstream]]:
    servers = [await Upstream(name).start() for name in ("a", "b")]
    yield servers
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as made:
        yield made


async def test_haproxy_runs_detached_with_owner_only_sockets_and_a_pid_file_others_trust(
    haproxy: Running,
) -> None:
    process = haproxy.process
    pid = process.pid()
    assert pid is not None and os.getsid(pid) == pid  # its own session: it outlives turnout
    record = json.loads(process.pid_path.read_text())
    assert record == {"pid": pid, "started": procs.start_ticks(pid), "boot_id": procs.boot_id()}
    for sock in (process.admin_socket, process.master_socket):
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    again = HaproxyProcess(haproxy.folder)  # what the next turnout command builds
    assert again.pid() == pid
    await again.stop()
    assert again.pid() is None and process.pid() is None and not procs.is_running(pid, None)
    await again.stop()  # stopping a stopped HAProxy is no error


async def test_a_pid_file_naming_another_process_is_not_trusted_nor_signalled(
    haproxy: Running,
) -> None:
    stranger = subprocess.Popen(["sleep", "30"])
    mine = haproxy.process.pid_path.read_text()
    try:
        record = json.loads(mine)
        record["pid"] = stranger.pid  # a reused pid: same number, another start time
        haproxy.process.pid_path.write_text(json.dumps(record))
        assert haproxy.process.pid() is None
        await haproxy.process.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        haproxy.process.pid_path.write_text(mine)  # for the fixture to stop HAProxy
    assert haproxy.process.pid() is not None


async def test_a_configuration_haproxy_refuses_starts_nothing_and_reloads_nothing(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    await haproxy.fill("web_p0", "s0", ups[0].address)
    good = haproxy.process.config_path.read_text()
    haproxy.process.config_path.write_text(good.replace("timeout connect", "timeout connekt"))
    with pytest.raises(RouterError, match=r"refuses the configuration .*haproxy\.cfg:\n.*connekt"):
        await haproxy.process.reload()
    before = await haproxy.process.master.processes()
    assert before[0].reloads == 0 and await versions(client, haproxy.url, 2) == ["a", "a"]
    other = HaproxyProcess(haproxy.folder / "other")
    other.folder.mkdir()
    other.config_path.write_text("frontend web\n    bind 127.0.0.1:0\n")
    with pytest.raises(RouterError, match="invalid port '0'"):
        await other.start()
    assert other.pid() is None and not other.pid_path.exists()


async def test_a_reload_keeps_what_the_runtime_api_set_and_a_start_takes_the_file(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    a, b = ups
    await haproxy.fill("web_p0", "s1", a.address)  # at run time only: the file has no address
    await haproxy.process.reload()
    assert await versions(client, haproxy.url, 3) == ["a"] * 3
    [master, worker] = await haproxy.process.master.processes()
    assert master.reloads == 1 and master.failed_reloads == 0 and worker.kind == "worker"
    # the file says b; after a stop, the file is the truth, whatever the last reload saved
    haproxy.write(layout(haproxy.folder, haproxy.port, slots=(Slot(), Slot(b.address, "ready"), Slot())))
    await haproxy.process.stop()
    await haproxy.process.start()
    assert await versions(client, haproxy.url, 3) == ["b"] * 3


async def test_a_stop_lets_requests_in_progress_finish_and_waits_for_no_idle_connection(
    haproxy: Running, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    await haproxy.fill("web_p0", "s0", ups[0].address)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as idle:
        assert (await idle.get(haproxy.url)).status_code == 200  # its connection stays open, idle
        held = asyncio.create_task(client.get(f"{haproxy.url}/sleep?s=0.5"))
        await asyncio.sleep(0.15)
        pid = haproxy.process.pid()
        assert pid is not None
        started = time.monotonic()
        await haproxy.process.stop()
        took = time.monotonic() - started
        answer = await held
    assert answer.status_code == 200 and answer.headers["x-version"] == "a"
    assert not procs.is_running(pid, None)
    assert took < STOP_SECONDS / 2, f"the stop took {took:.1f}s"  # not held up by the idle one
    with pytest.raises(httpx.ConnectError):
        await client.get(haproxy.url)


async def test_a_hundred_reloads_under_constant_load_fail_no_request(
    haproxy: Running, ups: list[Upstream]
) -> None:
    """Every request is counted (the load re-sends none without counting it): 0 failed."""
    a, b = ups
    await haproxy.fill("web_p0", "s0", a.address)
    await haproxy.fill("web_p0", "s1", b.address)
    haproxy.write(layout(haproxy.folder, haproxy.port,
                         slots=(Slot(a.address, "ready"), Slot(b.address, "ready"), Slot())))
    async with Load(haproxy.url + "/", rate=RATE, users=50, max_seconds=60, timeout=5.0) as load:
        await asyncio.sleep(0.5)
        started = time.monotonic()
        for _ in range(RELOADS):
            await haproxy.process.reload()
        took = time.monotonic() - started
        await asyncio.sleep(0.5)
    summary = load.summary(new_version="")
    [master, *_] = await haproxy.process.master.processes()
    print(f"{RELOADS} reloads in {took:.1f}s under {RATE:g} req/s: {summary.requests} requests, "
          f"{summary.failed} failed, {summary.resent} re-sent ({summary.problems()})")
    assert master.reloads == RELOADS and master.failed_reloads == 0
    assert summary.requests >= RATE * took * 0.9
    assert summary.failed == 0, summary.problems()
    assert set(summary.versions) == {"a", "b"}


async def test_a_master_killed_leaves_no_pid_to_trust(haproxy: Running) -> None:
    pid = haproxy.process.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    for _ in range(100):
        if haproxy.process.pid() is None:
            break
        await asyncio.sleep(0.02)
    assert haproxy.process.pid() is None
    with pytest.raises(RouterError, match="not running"):
        await haproxy.process.reload()
    haproxy.write(layout(haproxy.folder, haproxy.port))
    assert render(layout(haproxy.folder, haproxy.port)) == haproxy.process.config_path.read_text()
    await haproxy.process.start()  # the same folder starts again: stale sockets are replaced
    assert (await haproxy.runtime.servers_state("web_p0"))[0].state == "maint"
