"""`turnout status` and `turnout history --events` through the real CLI, read from the store.

The status JSON is the typed `Status` dumped: a real deployment's `status --json` must
validate and dump back to the very same document, with the keys scripts read. The latest
gate decision and a deployment's events come from the stored events, so a database
written by another process (here: the test itself) is what the CLI shows.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.e2e.conftest import Service, check
from tests.e2e.test_deploy import wait_for_phase
from turnout.plan import Pause, Route, RoutePool, Start, dump_plan, plan_hash
from turnout.statedir import StateDir
from turnout.status import Status
from turnout.store import DeploymentRecord, Store

TOP = ["service", "listen", "stable", "deployment", "rollback_failed", "router", "instances"]
INSTANCE = ["id", "version", "revision", "host", "address", "pid", "state", "healthy", "problem", "in_flight"]
DEPLOYMENT = ["id", "version", "strategy", "phase", "step", "steps", "interrupted", "message",
              "current", "gate"]


def store_of(service: Service) -> Store:
    return Store.open(StateDir.for_spec(service.spec, env={}).database())


def seed(store: Store, *, service: str = "shop", phase: str | None = None) -> DeploymentRecord:
    plan = [Start(revision="v2-abc", slots=(0,)),
            Route(pools=(RoutePool(revision="v2-abc", weight=10, slots=(0,)),)),
            Pause(seconds=60.0)]
    record = store.create_deployment(
        service=service, version="v2", target_revision="v2-abc", previous_revision=None,
        strategy="canary", plan=dump_plan(plan), plan_hash=plan_hash(plan), owner_pid=None)
    if phase is not None:
        record = store.update_deployment(record.id, phase=phase, message="all traffic on v2")
    return record


def test_status_json_is_the_typed_model_and_events_are_stored(service: Service) -> None:
    check(service.run("deploy", "v1"))
    result = service.run("status", "--json")
    check(result)
    data = json.loads(result.stdout)
    assert list(data) == TOP
    assert Status.model_validate(data).model_dump(mode="json") == data
    assert data["stable"]["version"] == "v1" and data["deployment"] is None
    assert data["router"]["running"] is True and data["router"]["traffic"] == {"v1": 100.0}
    assert [list(i) for i in data["instances"]] == [INSTANCE] * 3
    assert all(i["healthy"] and i["problem"] is None for i in data["instances"])

    human = service.run("status")
    check(human)
    assert "stable   v1 (" in human.stdout and "router   running; traffic: v1 100.0%" in human.stdout

    history = json.loads(service.run("history", "--json").stdout)
    deployment = history[0]["id"]
    result = service.run("history", "--events", str(deployment), "--json")
    check(result)
    story = json.loads(result.stdout)
    assert story["deployment"]["id"] == deployment and story["deployment"]["phase"] == "succeeded"
    steps = [e for e in story["events"] if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(len(story["deployment"]["plan"])))
    assert all(set(e) == {"id", "at", "step", "kind", "message", "data"} for e in story["events"])


def test_status_shows_the_latest_stored_gate_decision(service: Service) -> None:
    with store_of(service) as store:
        record = seed(store)
        store.add_event(record.id, step=1, kind="traffic", message="traffic: v2 10%",
                        data={"weights": {"v2-abc": 10}})
        store.add_event(record.id, step=2, kind="gate", message="Successful: fine",
                        data={"verdict": "Successful", "reason": "fine", "subject": "v2-abc",
                              "baseline": None, "evidence": {"requests": 40}})
        store.add_event(record.id, step=2, kind="gate", message="Inconclusive: 3 requests",
                        data={"verdict": "Inconclusive", "reason": "3 requests < 20",
                              "subject": "v2-abc", "baseline": "v1-def",
                              "evidence": {"canary": {"requests": 3}, "baseline": {"requests": 90}}})
        store.add_event(record.id, step=2, kind="info", message="later, not a gate")
    result = service.run("status", "--json")
    check(result)
    data = json.loads(result.stdout)
    deployment = data["deployment"]
    assert list(deployment) == DEPLOYMENT
    assert (deployment["id"], deployment["step"], deployment["steps"]) == (record.id, 0, 3)
    gate = deployment["gate"]
    assert (gate["verdict"], gate["reason"], gate["step"]) == ("Inconclusive", "3 requests < 20", 2)
    assert (gate["subject"], gate["baseline"]) == ("v2-abc", "v1-def")
    assert gate["evidence"] == {"canary": {"requests": 3}, "baseline": {"requests": 90}}
    assert abs(gate["at"] - time.time()) < 60
    assert Status.model_validate(data).model_dump(mode="json") == data

    human = service.run("status")
    check(human)
    assert "gate     Inconclusive: 3 requests < 20 (step 3," in human.stdout
    assert 'evidence: {"canary": {"requests": 3}, "baseline": {"requests": 90}}' in human.stdout
    assert "INTERRUPTED" in human.stdout  # nobody holds the lock: the CLI says so


async def test_a_real_gate_decision_is_stored_and_shown_by_another_process(service: Service) -> None:
    service.write(kind="canary", steps=[{"weight": 50}, {"pause": "1s"}], gate={"interval": "200ms"})
    check(service.run("deploy", "v1"))
    deploy = asyncio.create_task(service.arun("deploy", "v2"))  # no traffic: inconclusive, paused
    try:
        data = await wait_for_phase(service, "paused")
        gate = data["deployment"]["gate"]
        assert gate is not None, data["deployment"]
        assert gate["verdict"] == "Inconclusive" and gate["reason"].startswith("0 requests"), gate
        assert gate["evidence"], "the judge's evidence is stored with its decision"
        deployment = data["deployment"]["id"]
        story = json.loads(service.run("history", "--events", str(deployment), "--json").stdout)
        kinds = [e["kind"] for e in story["events"]]
        assert {"step", "traffic", "gate"} <= set(kinds), kinds
        traffic = [e for e in story["events"] if e["kind"] == "traffic"]
        assert traffic[-1]["data"], "a traffic change is stored with its split"
    finally:
        check(service.run("abort"))
        code, out, err = await asyncio.wait_for(deploy, 60)
    assert code == 3, out + err
    assert service.status()["deployment"] is None


def test_history_events_shows_one_deployment_with_its_data(service: Service) -> None:
    with store_of(service) as store:
        other = seed(store, service="cart", phase="succeeded")
        record = seed(store, phase="succeeded")
        store.add_event(record.id, step=0, kind="step", message="start 1 instance of v2")
        store.add_event(record.id, step=1, kind="traffic", message="traffic: v2 10%, v1 90%",
                        data={"weights": {"v2-abc": 10, "v1-def": 90}})
        store.add_event(record.id, step=-1, kind="phase", message="succeeded",
                        data={"phase": "succeeded", "message": ""})
    result = service.run("history", "--events", str(record.id), "--json")
    check(result)
    story = json.loads(result.stdout)
    assert story["deployment"]["version"] == "v2" and len(story["deployment"]["plan"]) == 3
    assert [(e["step"], e["kind"], e["message"], e["data"]) for e in story["events"]] == [
        (0, "step", "start 1 instance of v2", {}),
        (1, "traffic", "traffic: v2 10%, v1 90%", {"weights": {"v2-abc": 10, "v1-def": 90}}),
        (-1, "phase", "succeeded", {"phase": "succeeded", "message": ""}),
    ]

    human = service.run("history", "--events", str(record.id))
    check(human)
    lines = human.stdout.splitlines()
    assert lines[0] == f"deployment #{record.id} of v2 with canary: succeeded (all traffic on v2)"
    assert "[1] step      start 1 instance of v2" in lines[1]
    assert "[2] traffic   traffic: v2 10%, v1 90%" in lines[2]
    assert lines[3].strip() == 'weights: {"v2-abc": 10, "v1-def": 90}'

    for wrong in (str(other.id), "999"):
        result = service.run("history", "--events", wrong)
        assert result.returncode == 2, result.stderr
        assert f"no deployment #{wrong} of shop" in result.stderr and "Traceback" not in result.stderr
    assert service.run("history", "--events", "0").returncode == 2


def test_state_folder_is_owner_only_after_a_command(service: Service, tmp_path: Path) -> None:
    (tmp_path / ".turnout").mkdir(mode=0o755)
    (tmp_path / ".turnout").chmod(0o755)
    check(service.run("history"))
    assert (tmp_path / ".turnout").stat().st_mode & 0o777 == 0o700
