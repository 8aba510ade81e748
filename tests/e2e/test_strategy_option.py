"""`--strategy` through the real CLI and demo app: a feature toggle deployed from a rolling
spec, and a resumed deployment refused when its spec changed (exit 2, nothing touched)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Service, check, kill_at_first_traffic
from tests.e2e.flag_exposure import unexplained
from tests.e2e.test_deploy import answered_after, app_processes
from tests.e2e.test_feature_toggle import flag_history
from turnout.demo.load import Load

pytestmark = pytest.mark.slow

FLAG = "new-checkout"
NEW_PATH = f"v2+{FLAG}"
USERS = 100
ROLLING: dict[str, Any] = {"kind": "rolling", "max_surge": 1, "max_unavailable": 0}
# What `--strategy feature-toggle` needs besides the rolling spec's fields (flag and ramp):
# 3 named users of the load's 100 at 200 req/s give about 12 requests in the first pause.
TOGGLE_SETS = [
    "--set", f"strategy.flag={FLAG}",
    "--set", "strategy.ramp=[{users: [u1, u2, u3]}, {pause: 2s}, {percent: 30}, {pause: 1500ms}]",
    "--set", "strategy.gate={interval: 250ms, min_requests: 5, max_error_rate: 0.05}",
]


def write_with_feature(service: Service, **strategy: Any) -> None:
    """The spec with `strategy`, its instances running the demo's flagged code path."""
    service.write(**strategy)
    spec = yaml.safe_load(service.spec.read_text())
    spec["run"]["env"] = {"DEMO_FEATURE": FLAG}
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


async def test_strategy_feature_toggle_deploys_a_rolling_spec_as_a_toggle(service: Service) -> None:
    write_with_feature(service, **ROLLING)
    check(service.run("deploy", "v1"))
    async with Load(service.url, rate=200, users=USERS, max_seconds=120) as load:
        code, out, err = await service.arun("deploy", "v2", "--strategy", "feature-toggle", *TOGGLE_SETS)
        finished = time.monotonic()
        assert code == 0, out + err
        await asyncio.sleep(0.5)
    summary = load.summary(new_version=NEW_PATH)
    assert summary.clean, summary.problems()
    assert "with feature-toggle" in out
    assert answered_after(load, finished) == {NEW_PATH}  # the flag is on for everyone
    assert "v2" in {s.version for s in load.samples}  # shipped dark first, by the rolling spec
    new_path = [s for s in load.samples if s.version == NEW_PATH]
    assert unexplained(new_path, flag_history(service), wall=load.wall) == []
    history = json.loads(service.run("history", "--json").stdout)
    assert history[0]["strategy"] == "feature-toggle" and history[0]["phase"] == "succeeded"
    assert service.status()["stable"]["version"] == "v2"


def world(service: Service) -> dict[str, Any]:
    """What a refused command must leave as it was: the deployment, instances, traffic."""
    status = service.status()
    deployment = status["deployment"]
    return {
        "deployment": {k: deployment[k] for k in ("id", "version", "strategy", "phase", "step")},
        "instances": sorted((i["id"], i["pid"], i["version"]) for i in status["instances"]),
        "traffic": status["router"]["traffic"],
    }


def set_plan_hash(service: Service, deployment: int, value: str) -> str:
    """Write `value` as the stored plan hash of `deployment`; returns the one it replaced."""
    with sqlite3.connect(service.folder / ".turnout" / "state.db") as db:
        (old,) = db.execute("SELECT plan_hash FROM deployments WHERE id = ?", (deployment,)).fetchone()
        db.execute("UPDATE deployments SET plan_hash = ? WHERE id = ?", (value, deployment))
    return str(old)


async def test_a_resumed_deployment_whose_plan_changed_is_refused(service: Service) -> None:
    startup = ("--set", "run.env.DEMO_STARTUP_MS=500")  # part of v2's revision on every call
    service.write(**ROLLING)
    check(service.run("deploy", "v1"))
    async with Load(service.url, rate=150, users=50, max_seconds=150) as load:
        await kill_at_first_traffic(service, "v2", *startup)
        await asyncio.sleep(0.5)
        before = world(service)
        assert service.status()["deployment"]["interrupted"] is True

        changes = [
            ({"kind": "canary", "steps": [{"weight": 50}]},
             "it began with strategy rolling and the spec now says canary"),
            ({**ROLLING, "max_surge": 2}, "the spec changed since it began and now plans it otherwise"),
        ]
        for strategy, words in changes:
            service.write(**strategy)
            code, out, err = await service.arun("deploy", "v2", *startup)
            assert code == 2, out + err
            assert words in err and "`turnout abort`" in err and "Traceback" not in err, err
            assert world(service) == before
        code, out, err = await service.arun("promote")  # carrying it on is refused the same way
        assert code == 2 and "cannot resume" in err, out + err
        assert world(service) == before

        service.write(**ROLLING)
        stored = set_plan_hash(service, before["deployment"]["id"], "0" * 64)
        code, out, err = await service.arun("deploy", "v2", *startup)
        assert code == 2 and "its stored plan does not match its hash" in err, out + err
        assert world(service) == before
        set_plan_hash(service, before["deployment"]["id"], stored)

        code, out, err = await service.arun("deploy", "v2", *startup)  # the spec it began with
        finished = time.monotonic()
        assert code == 0, out + err
        assert f"resuming deployment #{before['deployment']['id']}" in out
        await asyncio.sleep(0.4)
    summary = load.summary(new_version="v2")
    assert summary.clean, summary.problems()
    assert answered_after(load, finished) == {"v2"}
    status = service.status()
    assert status["deployment"] is None and status["stable"]["version"] == "v2"
    assert len(app_processes(service.folder)) == 3
