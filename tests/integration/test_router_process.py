"""The builtin router's process: named by pid, start time and boot id; a clean environment.

Real proxies and real stranger processes: a pid file that names a live process with another
start time (a pid reused after the proxy died, or after a reboot) must never get a signal,
and the deployer's secrets must not reach the proxy or its worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from turnout import procs
from turnout.routers.builtin import BuiltinRouter

SECRETS = {"AWS_SECRET_ACCESS_KEY": "not-for-the-router", "GITHUB_TOKEN": "ghp_deployer"}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tr-"))  # short: unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a router, in its own session like a router would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
async def router(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BuiltinRouter]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)  # the deployer's shell
    monkeypatch.setenv("TURNOUT_PROXY_IDLE_TIMEOUT", "30")  # the proxy's own setting
    started = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    await started.ensure_running()
    try:
        yield started
    finally:
        await started.stop()
        await started.aclose()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def ticks(pid: int) -> int:
    found = procs.start_ticks(pid)
    assert found is not None
    return found


async def test_the_pid_file_names_the_proxy_by_start_time_and_boot(router: BuiltinRouter) -> None:
    data = json.loads(router.pid_path.read_text())
    pid = router.pid()
    assert pid is not None and data["pid"] == pid
    assert data["started"] == ticks(pid) and data["boot_id"] == procs.boot_id()
    await router.stop()
    assert router.pid() is None and not procs.is_running(pid, data["started"])


@pytest.mark.parametrize("record", ["other start time", "other boot", "bare pid"])
async def test_a_pid_file_naming_a_stranger_is_not_signalled(
    state_dir: Path, stranger: subprocess.Popen[bytes], record: str,
) -> None:
    pid = stranger.pid
    data = {"pid": pid, "started": ticks(pid), "boot_id": procs.boot_id()}
    if record == "other start time":
        data["started"] = ticks(pid) + 1234
    elif record == "other boot":
        data["boot_id"] = "0000-another-boot"
    text = f"{pid}\n" if record == "bare pid" else json.dumps(data)
    (state_dir / "proxy.pid").write_text(text)
    router = BuiltinRouter(state_dir, listen="127.0.0.1:0", preview_listen=None)
    assert router.pid() is None
    await router.stop()
    await router.aclose()
    assert stranger.poll() is None, "a process that is not the router was signalled"
    assert procs.is_running(pid, ticks(pid))


async def test_the_proxy_and_its_worker_do_not_get_the_deployers_secrets(router: BuiltinRouter) -> None:
    supervisor = router.pid()
    assert supervisor is not None
    worker = int(str((await router.health())["pid"]))
    for pid in (supervisor, worker):
        env = environ_of(pid)
        assert not set(SECRETS) & set(env), pid
        assert env["PATH"] == os.environ["PATH"]
        assert env["TURNOUT_PROXY_IDLE_TIMEOUT"] == "30"


async def test_a_bare_pid_from_an_older_turnout_still_names_its_running_proxy(router: BuiltinRouter) -> None:
    pid = router.pid()
    assert pid is not None
    router.pid_path.write_text(f"{pid}\n")  # what turnout wrote before start times were recorded
    assert router.pid() == pid  # its command line names this state directory
    await router.stop()
    assert router.pid() is None and procs.start_ticks(pid) is None
