"""Gates, exit codes, processes and environments through the real CLI, router and demo app.

- an Inconclusive gate at the end of a canary pause holds the deployment for a human;
- blue-green whose green fleet refuses connections after its health check: the preview tests
  fail, exit 3, no switch, and blue serves every request;
- a restore that cannot bring the previous version back: exit 1, naming what serves;
- the warm blue fleet stops when `rollback_window` ends, with no further command, and a
  rollback inside the window is still a flip onto the same processes;
- instances, test commands and the router do not get the deployer's secrets.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Service, check, cli_env
from tests.e2e.test_deploy import app_processes, wait_for_phase
from turnout import procs
from turnout.demo.load import Load

pytestmark = pytest.mark.slow
RATE = 150.0
SECRETS = {"AWS_SECRET_ACCESS_KEY": "not-for-the-service", "GITHUB_TOKEN": "ghp_deployer"}
PROBE = ("import os, urllib.request; "
         "urllib.request.urlopen(os.environ['TURNOUT_PREVIEW_URL'] + '/healthz', timeout=5)")


def edit_spec(service: Service, **run: object) -> None:
    spec = yaml.safe_load(service.spec.read_text())
    spec["run"].update(run)
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


def pids(service: Service) -> list[int]:
    return sorted(i["pid"] for i in service.status()["instances"])


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


async def test_an_inconclusive_pause_holds_the_canary_until_promote(service: Service) -> None:
    service.write(kind="canary", steps=[{"weight": 50}, {"pause": "1s"}], gate={"interval": "200ms"})
    check(service.run("deploy", "v1"))
    deploy = asyncio.create_task(service.arun("deploy", "v2"))  # no traffic at all: no verdict
    data = await wait_for_phase(service, "paused")
    assert data["deployment"]["message"].startswith("inconclusive: 0 requests"), data["deployment"]
    await asyncio.sleep(2.0)
    assert not deploy.done()
    assert service.status()["router"]["traffic"] == {"v2": 50.0, "v1": 50.0}
    shown = service.run("status")
    assert "paused (inconclusive: 0 requests" in shown.stdout, shown.stdout
    check(service.run("promote"))
    code, out, err = await asyncio.wait_for(deploy, 60)
    assert code == 0, out + err
    assert "Inconclusive" in out
    assert service.status()["stable"]["version"] == "v2"


@pytest.mark.parametrize("test", [{"http": "/healthz"}, {"command": [sys.executable, "-c", PROBE]}],
                         ids=["http-test", "command-test"])
async def test_green_refusing_connections_fails_its_preview_tests_and_blue_keeps_serving(
    service: Service, test: dict[str, object],
) -> None:
    service.write(kind="blue-green", tests=[test], rollback_window="60s")
    check(service.run("deploy", "v1"))
    blue = pids(service)
    async with Load(service.url, rate=RATE, users=50, max_seconds=60) as load:
        code, out, err = await service.arun("deploy", "v2", "--set", "run.env.DEMO_FAIL=refuse")
        await asyncio.sleep(0.3)
    assert code == 3, out + err
    assert "502" in out + err  # the preview listener answered for green alone: Bad Gateway
    summary = load.summary(new_version="v2")
    assert summary.clean, summary.problems()
    assert summary.requests > 50 and summary.versions == {"v1": summary.requests}
    status = service.status()
    assert status["stable"]["version"] == "v1"
    assert pids(service) == blue  # blue was never touched
    assert status["router"]["traffic"] == {"v1": 100.0}
    assert len(app_processes(service.folder)) == 3  # green is gone


async def test_a_restore_that_fails_exits_1_and_says_what_serves(service: Service) -> None:
    for version in ("v1", "v2"):
        (service.folder / "releases" / version).mkdir(parents=True)
    service.write(kind="big-bang")
    edit_spec(service, cwd="releases/{version}")
    check(service.run("deploy", "v1"))
    shutil.rmtree(service.folder / "releases" / "v1")  # v1 can never start again
    result = service.run("deploy", "v2", "--set", "run.env.DEMO_FAIL=health")
    check(result, 1)
    said = result.stdout + result.stderr
    assert "rollback-failed" in said and "releases/v1 does not exist" in said
    assert "now serving: nothing (the router's table sends no traffic anywhere)" in said
    assert "could not be brought back" in result.stderr
    status = service.status()
    assert status["rollback_failed"]["version"] == "v2"
    assert "now serving: nothing" in status["rollback_failed"]["message"]
    assert "ALERT" in service.run("status").stdout
    history = json.loads(service.run("history", "--json").stdout)
    assert [(r["version"], r["phase"]) for r in history] == [("v2", "rollback-failed"), ("v1", "succeeded")]


async def test_the_warm_fleet_stops_when_its_window_ends_without_another_command(service: Service) -> None:
    service.write(kind="blue-green", rollback_window="2s")
    check(service.run("deploy", "v1"))
    blue = pids(service)
    check(service.run("deploy", "v2"))
    ended = time.monotonic()
    assert all(procs.is_running(pid, None) for pid in blue)  # kept warm for the window
    while any(procs.is_running(pid, None) for pid in blue):
        assert time.monotonic() - ended < 8, "the warm fleet outlived its window"
        await asyncio.sleep(0.1)
    assert len(app_processes(service.folder)) == 3
    status = service.status()
    assert sorted(i["version"] for i in status["instances"]) == ["v2"] * 3
    assert status["router"]["traffic"] == {"v2": 100.0}
    log = (service.folder / ".turnout" / "logs" / "reaper.log").read_text()
    assert sum("no longer needed" in line for line in log.splitlines()) == 3, log


@pytest.mark.serial  # the rollback must start within the 5 s window (a busy machine took longer: a redeploy)
async def test_a_rollback_inside_the_window_is_a_flip_and_the_reaper_spares_what_it_restored(
    service: Service,
) -> None:
    service.write(kind="blue-green", rollback_window="5s")
    check(service.run("deploy", "v1"))
    blue = pids(service)
    check(service.run("deploy", "v2"))
    green = sorted(set(app_processes(service.folder)) - set(blue))
    result = service.run("rollback")
    check(result)
    assert "flip" in result.stdout
    assert pids(service) == blue
    assert not any(procs.is_running(pid, None) for pid in green)
    await asyncio.sleep(6.0)  # past the window: nothing of v1 is stopped
    assert pids(service) == blue and app_processes(service.folder) == blue
    assert service.status()["stable"]["version"] == "v1"


async def test_instances_tests_and_the_router_do_not_get_the_deployers_secrets(
    service: Service, tmp_path: Path,
) -> None:
    dump = tmp_path / "test-env.json"
    script = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    service.write(kind="blue-green", tests=[{"command": [sys.executable, "-c", script, str(dump)]}])
    edit_spec(service, inherit_env=["PATH", "HOME", "SHARED_CACHE"])
    env = {**cli_env(), **SECRETS, "SHARED_CACHE": "/srv/cache"}

    def deploy(version: str) -> None:
        check(subprocess.run([sys.executable, "-m", "turnout", "deploy", version], cwd=service.folder,
                             env=env, capture_output=True, text=True, timeout=120, check=False,
                             stdin=subprocess.DEVNULL))

    deploy("v1")
    deploy("v2")
    seen = {"test": json.loads(dump.read_text())}
    for pid in app_processes(service.folder):
        seen[f"instance {pid}"] = environ_of(pid)
    router = json.loads((service.folder / ".turnout" / "router" / "proxy.pid").read_text())
    seen["router"] = environ_of(router["pid"])
    assert len(seen) == 1 + 6 + 1  # green, and blue kept warm
    for who, variables in seen.items():
        assert not set(SECRETS) & set(variables), who
        assert variables["PATH"] == env["PATH"], who
    for who, variables in seen.items():
        if who != "router":
            assert variables["SHARED_CACHE"] == "/srv/cache", who
    assert "SHARED_CACHE" not in seen["router"]
    assert seen["test"]["TURNOUT_PREVIEW_URL"] == f"http://127.0.0.1:{service.preview_port}"
