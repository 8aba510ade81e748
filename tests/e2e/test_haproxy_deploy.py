"""Deployments of the demo app through HAProxy (`router: haproxy`), with the real CLI, under load.

The same deployments as `test_deploy.py` (its strategies, rate and checks), with HAProxy in
the data path and turnout only steering it through its runtime API: ten deployments each of
rolling, blue-green (with its preview test) and canary fail and re-send no request, and only
the new version answers once each command has ended. A CLI killed at a canary's first change
of traffic leaves HAProxy routing as it was told (the load stays clean, both versions
answering), and the next command finishes the deployment or rolls it back; `turnout down`
then leaves no HAProxy of the service running. `turnout demo --router haproxy` runs the demo
through HAProxy, and refuses the feature toggle, which needs flags evaluated by the router.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Service, check, cli_env, kill_at_first_traffic
from tests.e2e.test_deploy import RATE, STRATEGIES, answered_after, app_processes, deploy_ten_times
from tests.system import missing
from turnout.demo.load import Load

pytestmark = pytest.mark.slow


@pytest.fixture
def service(service: Service) -> Service:
    """tests/e2e's service, its spec naming HAProxy as the router."""
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")
    service.router = "haproxy"
    service.write()
    return service


def haproxy_processes(folder: Path) -> list[int]:
    """Pids of HAProxy processes (master and workers) whose command line names a file in `folder`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name == "haproxy" and \
                any(str(folder).encode() in arg for arg in argv[1:]):
            pids.append(int(entry.name))
    return sorted(pids)


async def status(service: Service) -> dict[str, Any]:
    """`turnout status --json` without blocking the event loop (the load goes on meanwhile)."""
    code, out, err = await service.arun("status", "--json")
    assert code == 0, out + err
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.parametrize("name", list(STRATEGIES))
async def test_ten_deployments_through_haproxy_fail_no_request(service: Service, name: str) -> None:
    await deploy_ten_times(service, name)
    router = service.status()["router"]
    assert int(router["where"]["pid"]) in haproxy_processes(service.folder)  # HAProxy carried them


@pytest.mark.parametrize("resolve", ["deploy", "abort"])
async def test_sigkill_mid_canary_haproxy_keeps_routing(service: Service, resolve: str) -> None:
    service.write(**STRATEGIES["canary"])
    check(service.run("deploy", "v1"))
    master = service.status()["router"]["where"]["pid"]
    async with Load(service.url, rate=RATE, users=50, max_seconds=120) as load:
        await kill_at_first_traffic(service, "v2")
        killed = time.monotonic()
        await asyncio.sleep(1.0)
        left = await status(service)
        resumed = time.monotonic()
        if resolve == "deploy":
            code, out, err = await service.arun("deploy", "v2")
        else:
            code, out, err = await service.arun("abort")
        finished = time.monotonic()
        assert code == 0, out + err
        await asyncio.sleep(0.4)

    assert left["deployment"]["interrupted"] is True
    assert left["router"]["traffic"] == {"v2": 20.0, "v1": 80.0}
    between = [s for s in load.samples if killed <= s.sent < resumed]
    assert {s.version for s in between} == {"v1", "v2"}, len(between)  # the canary's split, kept
    summary = load.summary(new_version="v2")
    assert summary.clean, summary.problems()
    expected = "v2" if resolve == "deploy" else "v1"
    assert answered_after(load, finished) == {expected}
    after = service.status()
    assert after["deployment"] is None
    assert after["stable"]["version"] == expected
    assert sorted(i["version"] for i in after["instances"]) == [expected] * 3
    assert after["router"]["where"]["pid"] == master  # never restarted
    assert len(app_processes(service.folder)) == 3

    check(service.run("down"))
    assert haproxy_processes(service.folder) == []
    assert app_processes(service.folder) == []


def test_demo_through_haproxy_prints_its_rows_as_json() -> None:
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")
    folder = Path(tempfile.mkdtemp(prefix="thd-"))  # the demo's own folder goes here: short socket paths
    try:
        result = subprocess.run(
            [sys.executable, "-m", "turnout", "demo", "--router", "haproxy", "--strategy", "canary",
             "--json", "--rate", "100"], cwd=folder, check=False, capture_output=True, text=True,
            timeout=180, stdin=subprocess.DEVNULL, env={**cli_env(), "TMPDIR": str(folder)},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = json.loads(result.stdout)
        assert [r["strategy"] for r in rows] == ["canary"]
        row = rows[0]
        assert row["outcome"] == "succeeded" and row["requests"] > 50
        assert row["failed"] == row["resent"] == 0, row
        assert row["exposed_users"] > 0  # some users met the canary before it took all traffic
        assert haproxy_processes(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_through_haproxy_refuses_the_feature_toggle(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turnout", "demo", "--router", "haproxy", "--strategy", "feature-toggle"],
        cwd=tmp_path, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "feature-toggle left out" in result.stderr
    assert "turnout server" in result.stderr and "Prometheus" in result.stderr
    assert "Traceback" not in result.stderr
