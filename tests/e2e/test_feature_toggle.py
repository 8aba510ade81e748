"""The feature-toggle strategy through the real CLI, router, flag store and demo app, under load.

The demo app takes its new code path (and says so in `X-Version: <version>+new-checkout`)
where the router tells it the flag is on for the request's user.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Service
from turnout.demo.load import Load
from turnout.flags import FlagState, evaluate
from turnout.flags.store import FlagStore

pytestmark = pytest.mark.slow

FLAG = "new-checkout"
NAMED = ["u1", "u2", "u3"]
TOGGLE: dict[str, Any] = {
    "kind": "feature-toggle", "flag": FLAG, "ship": "rolling",
    # 3 named users of the load's 100 at 200 req/s: about 12 requests in the first pause.
    "ramp": [{"users": NAMED}, {"pause": "2s"}, {"percent": 30}, {"pause": "1500ms"}],
    "gate": {"interval": "250ms", "min_requests": 5, "max_error_rate": 0.05},
}


def write(service: Service) -> None:
    service.write(**TOGGLE)
    spec = yaml.safe_load(service.spec.read_text())
    spec["run"]["env"] = {"DEMO_FEATURE": FLAG}
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


async def first_release(service: Service) -> None:
    """Deploy v1 with its flag ramp under load: a ramp's pause needs traffic to reach a verdict
    (an Inconclusive one holds the deployment for a human)."""
    async with Load(service.url, rate=200, users=100, max_seconds=60):
        code, out, err = await service.arun("deploy", "v1")
    assert code == 0, out + err


def targeted_before_the_end(service: Service, since: float) -> set[str]:
    """Users the flag was on for at any ramp step (changed after `since`) before it was on for all."""
    store = FlagStore.open(f"sqlite:///{service.folder / '.turnout' / 'state.db'}")
    try:
        states = [a.change.get("after") for a in store.history(FLAG) if a.at >= since]
    finally:
        store.close()
    users: set[str] = set()
    for definition in states[:-1]:  # the last change is "on for everyone"
        if not definition:
            continue
        flags = FlagState.from_json({"version": 2, "features": [definition], "segments": []})
        users |= {f"u{i}" for i in range(100) if evaluate(flags, FLAG, {"userId": f"u{i}"}).enabled}
    return users


async def test_feature_toggle_deployment_fails_no_request_and_exposes_only_targeted_users(
    service: Service,
) -> None:
    write(service)
    await first_release(service)
    since = time.time()
    async with Load(service.url, rate=200, users=100, max_seconds=120) as load:
        code, out, err = await service.arun("deploy", "v2")
        finished = time.monotonic()
        assert code == 0, out + err
        await asyncio.sleep(0.5)
    summary = load.summary(new_version=f"v2+{FLAG}")
    assert summary.failed == 0, summary.errors
    # Every user on the new path after the end; before it, only targeted users were.
    assert {s.version for s in load.samples if s.sent >= finished} == {f"v2+{FLAG}"}
    allowed = targeted_before_the_end(service, since)
    assert set(NAMED) <= allowed and len(allowed) < 60
    ramp_end = min(s.sent for s in load.samples if s.version == f"v2+{FLAG}" and s.user not in allowed)
    early = {s.user for s in load.samples if s.version == f"v2+{FLAG}" and s.done < ramp_end}
    assert early and early <= allowed


async def test_a_failing_new_code_path_is_switched_off_and_only_flagged_users_saw_errors(
    service: Service,
) -> None:
    write(service)
    await first_release(service)
    since = time.time()
    async with Load(service.url, rate=200, users=100, max_seconds=120) as load:
        code, out, err = await service.arun("deploy", "v2", "--set", "run.env.DEMO_FEATURE_FAIL=1")
        finished = time.monotonic()
        await asyncio.sleep(0.5)
    assert code == 3, out + err
    assert "gate" in out + err and f"flag {FLAG} switched off" in out
    failed = [s for s in load.samples if s.failed]
    assert failed, "the new path never ran"
    assert {s.version for s in failed} == {f"v2+{FLAG}"}  # only the new code path failed
    assert {s.user for s in failed} <= targeted_before_the_end(service, since)
    after = [s for s in load.samples if s.sent >= finished]
    assert after and not any(s.failed for s in after)
    assert {s.version for s in after} == {"v2"}  # the code stays, dark
    assert service.status()["stable"]["version"] == "v2"
