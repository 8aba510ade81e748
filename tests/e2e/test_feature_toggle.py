"""The feature-toggle strategy through the real CLI, router, flag store and demo app, under load.

The demo app takes its new code path (and says so in `X-Version: <version>+new-checkout`)
where the router tells it the flag is on for the request's user. Each answer on the new
path is checked against the flag's audit trail: some state of the flag in effect while
the request was in flight must have it on for that user (`tests/e2e/flag_exposure.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Service
from tests.e2e.flag_exposure import FlagHistory, unexplained
from turnout.demo.load import Load
from turnout.flags.store import FlagStore

pytestmark = pytest.mark.slow

FLAG = "new-checkout"
NEW_PATH = f"v2+{FLAG}"
USERS = [f"u{i}" for i in range(100)]
NAMED = ["u1", "u2", "u3"]
LAG = 0.5  # how long the router may trail the store when a flag is switched off
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
    async with Load(service.url, rate=200, users=len(USERS), max_seconds=60):
        code, out, err = await service.arun("deploy", "v1")
    assert code == 0, out + err


def flag_history(service: Service) -> FlagHistory:
    """Every state the flag store recorded for the flag, v1's deployment included."""
    store = FlagStore.open(f"sqlite:///{service.folder / '.turnout' / 'state.db'}")
    try:
        return FlagHistory.from_audit(FLAG, store.history(FLAG))
    finally:
        store.close()


async def test_feature_toggle_deployment_fails_no_request_and_exposes_only_targeted_users(
    service: Service,
) -> None:
    write(service)
    await first_release(service)
    async with Load(service.url, rate=200, users=len(USERS), max_seconds=120) as load:
        code, out, err = await service.arun("deploy", "v2")
        finished = time.monotonic()
        assert code == 0, out + err
        await asyncio.sleep(0.5)
    summary = load.summary(new_version=NEW_PATH)
    assert summary.clean, summary.problems()
    assert {s.version for s in load.samples if s.sent >= finished} == {NEW_PATH}
    # Each answer on the new path came while a state of the flag had it on for its user.
    history = flag_history(service)
    new_path = [s for s in load.samples if s.version == NEW_PATH]
    assert unexplained(new_path, history, wall=load.wall) == []
    # And the ramp was seen in steps: before the flag was on for all, the named users and
    # some of the 30% met the new path, and far from everyone did.
    assert load.started_wall is not None
    on_for_all = history.first_on_for_all(USERS, after=load.started_wall)
    assert on_for_all is not None
    early = {s.user for s in new_path if load.wall(s.done) < on_for_all}
    assert set(NAMED) < early and len(early) < 60, sorted(early)


@pytest.mark.serial  # the router applies 'off' within LAG (0.5 s)
async def test_a_failing_new_code_path_is_switched_off_and_only_flagged_users_saw_errors(
    service: Service,
) -> None:
    write(service)
    await first_release(service)
    async with Load(service.url, rate=200, users=len(USERS), max_seconds=120) as load:
        code, out, err = await service.arun("deploy", "v2", "--set", "run.env.DEMO_FEATURE_FAIL=1")
        finished = time.monotonic()
        await asyncio.sleep(0.5)
    assert code == 3, out + err
    assert "gate" in out + err and f"flag {FLAG} switched off" in out
    failed = [s for s in load.samples if s.failed]
    assert failed, "the new path never ran"
    assert {s.version for s in failed} == {NEW_PATH}  # only the new code path failed
    assert load.summary(new_version=NEW_PATH).resent == 0
    # Every new-path answer had the flag on for its user, allowing the router a moment
    # (LAG) to apply "off" after the store wrote it.
    new_path = [s for s in load.samples if s.version == NEW_PATH]
    assert unexplained(new_path, flag_history(service), wall=load.wall, lag=LAG) == []
    after = [s for s in load.samples if s.sent >= finished]
    assert after and not any(s.failed for s in after)
    assert {s.version for s in after} == {"v2"}  # the code stays, dark
    assert service.status()["stable"]["version"] == "v2"
