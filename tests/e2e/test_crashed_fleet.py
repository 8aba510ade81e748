"""A feature toggle whose new code path crashes the processes, through the real CLI and demo app.

The demo app exits once it has answered `DEMO_FEATURE_CRASH_AFTER` requests on the flag's
new code path. The gate fails on what the crashes cost, the rollback switches the flag off
and keeps the shipped code, dark: it must then find the crashed processes and start them
again in place, so that v2 serves every request once the command has ended (before, the
deployment ended exit 3 with every instance dead and every request a 502).

About 10 s on a 2-core machine: a first release, then a rolling ship and a ramp under load.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from tests.e2e.conftest import Service, check
from tests.e2e.test_deploy import app_processes
from turnout.demo.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FLAG = "new-checkout"
USERS = 100
NAMED = ["u1", "u2", "u3", "u4", "u5"]  # 5 of the load's 100 users at 200 req/s: 10 req/s on the new path
TOGGLE = {
    "kind": "feature-toggle", "flag": FLAG, "ship": "rolling", "max_surge": 3,  # one batch
    "ramp": [{"users": NAMED}, {"pause": "5s"}],
    "gate": {"interval": "250ms", "min_requests": 5, "max_error_rate": 0.05},
}


async def test_a_toggle_whose_new_path_crashed_every_process_serves_again_after_the_rollback(
    service: Service,
) -> None:
    service.write(**TOGGLE)
    spec = yaml.safe_load(service.spec.read_text())
    spec["run"]["env"] = {"DEMO_FEATURE": FLAG}
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    check(service.run("deploy", "v1", "--strategy", "rolling"))  # no ramp to wait for
    async with Load(service.url, rate=200, users=USERS, max_seconds=60) as load:
        code, out, err = await service.arun("deploy", "v2", "--set", "run.env.DEMO_FEATURE_CRASH_AFTER=3")
        finished = time.monotonic()
        await asyncio.sleep(1.0)
    assert code == 3, out + err
    assert "gate failed" in out + err and f"flag {FLAG} switched off" in out
    assert "starting it again in place" in out and "serves again, dark" in out, out
    crashed = [s for s in load.samples if s.failed]
    assert crashed, "the new code path never crashed anything"
    after = [s for s in load.samples if s.sent >= finished]
    assert after and not [s for s in after if s.failed]
    assert {s.version for s in after} == {"v2"}  # the code stays, dark, and serves
    status = service.status()
    assert status["stable"]["version"] == "v2"
    assert sorted(i["version"] for i in status["instances"]) == ["v2"] * 3
    assert all(i["healthy"] for i in status["instances"])
    assert len(app_processes(service.folder)) == 3
