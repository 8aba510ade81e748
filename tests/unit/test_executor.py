"""The executor's logic on fakes: a real store on SQLite, fake time, platform and router.

Each test deploys like `Session.deploy` does (plan from the strategy, deployment record,
`Executor.run`) and checks what a user would notice: who gets the traffic, what runs,
what the store says. Every test also checks that no instance was stopped while the
router still listed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from turnout import strategies
from turnout.analysis.sequential import ComparingJudge
from turnout.analysis.sources import RouterCounters
from turnout.engine.events import Event
from turnout.engine.executor import Executor
from turnout.errors import ConflictError, PlatformError
from turnout.flags import FlagState, evaluate
from turnout.flags.store import FlagStore
from turnout.model import Revision
from turnout.plan import Pause, dump_plan, load_plan, plan_hash
from turnout.routers.base import Counters
from turnout.spec import Spec, parse_strategy
from turnout.store.db import DeploymentRecord, Store
from turnout.strategies import Fleet
from turnout.testing import FakeClock, FakePlatform, FakeRouter, Journal, fake_http, traffic

pytestmark = pytest.mark.timeout(20)

SPEC: dict[str, Any] = {
    "service": "shop",
    "listen": "127.0.0.1:8080",
    "instances": 3,
    "run": {"command": ["app", "--port", "{port}"], "grace": "3s"},
    "health": {"path": "/healthz", "interval": "1s", "deadline": "20s"},
    "routing": {"drain_timeout": "10s"},
}


@dataclass(repr=False)  # keeps assertion messages short
class World:
    spec: Spec
    store: Store
    clock: FakeClock
    platform: FakePlatform
    router: FakeRouter
    journal: Journal
    http: httpx.AsyncClient
    flags: FlagStore | None = None
    events: list[Event] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)  # (step shown, step stored)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == "step" and event.step is not None:
            active = self.store.active_deployment(self.spec.service)
            assert active is not None
            self.progress.append((event.step, active.step))

    def executor(self) -> Executor:
        return Executor(spec=self.spec, store=self.store, platform=self.platform,
                        router=self.router, clock=self.clock, emit=self.emit, http=self.http,
                        source=RouterCounters(self.router), judge=ComparingJudge(), flags=self.flags)

    def rev(self, version: str) -> str:
        return Revision.of(self.spec, version).id

    async def create(self, version: str, **strategy: Any) -> DeploymentRecord:
        """Plan and record a deployment of `version` the way `Session.deploy` does."""
        if strategy:
            self.spec = self.spec.model_copy(update={"strategy": parse_strategy(strategy)})
        revision = Revision.of(self.spec, version)
        self.store.save_revision(revision)
        probe = self.executor()
        await probe.refresh()
        stable = self.store.stable(self.spec.service)
        serving = tuple(sorted(probe.fleet.get(stable, {}))) if stable else ()
        previous = stable if serving else None
        fleet = Fleet(target=revision.id, instances=self.spec.instances, stable=previous,
                      stable_slots=serving)
        plan = strategies.plan(fleet, self.spec.strategy)
        return self.store.create_deployment(
            service=self.spec.service, version=version, target_revision=revision.id,
            previous_revision=previous, strategy=self.spec.strategy.kind, plan=dump_plan(plan),
            plan_hash=plan_hash(plan), owner_pid=None,
        )

    async def deploy(self, version: str, **strategy: Any) -> DeploymentRecord:
        record = await self.create(version, **strategy)  # first: the executor takes its spec
        return await self.executor().run(record)

    def start(self, record: DeploymentRecord) -> asyncio.Task[DeploymentRecord]:
        return asyncio.create_task(self.executor().run(record))

    def running(self, version: str) -> list[int]:
        return [i.slot for i in self.platform.live() if i.version == version]

    def stored(self, version: str) -> list[tuple[int, str]]:
        return [(r.instance.slot, r.state) for r in self.store.instances(self.spec.service)
                if r.instance.version == version]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    journal = Journal()
    platform = FakePlatform(journal=journal)
    store = Store.open(f"sqlite:///{tmp_path}/s.db", now=clock.wall)
    async with fake_http(platform) as http:
        w = World(Spec.model_validate(SPEC), store, clock, platform, FakeRouter(journal=journal),
                  journal, http, FlagStore.open(f"sqlite:///{tmp_path}/s.db"))
        yield w
    assert w.flags is not None
    w.flags.close()
    store.close()
    assert journal.stopped_while_routed == [], "an instance was stopped while still routed"


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


async def finish(task: asyncio.Task[DeploymentRecord]) -> DeploymentRecord:
    return await asyncio.wait_for(task, timeout=5)


def phase_is(w: World, deployment_id: int, phase: str) -> Callable[[], bool]:
    def check() -> bool:
        record = w.store.deployment(deployment_id)
        return record is not None and record.phase == phase
    return check


async def first_release(w: World) -> DeploymentRecord:
    done = await w.deploy("v1")
    assert done.phase == "succeeded", done.message
    assert w.router.shares() == {"v1": 100.0}
    w.events.clear()
    w.progress.clear()
    return done


CANARY_HOLD: dict[str, Any] = {"kind": "canary", "steps": [{"weight": 34}, {"pause": "forever"}]}


# -- success paths -------------------------------------------------------------------

async def test_rolling_plan_runs_to_succeeded_and_retires_the_old_fleet(world: World) -> None:
    await first_release(world)
    v1_instances = [i.id for i in world.platform.live()]
    done = await world.deploy("v2", kind="rolling", max_surge=1, max_unavailable=0)
    assert done.phase == "succeeded", done.message
    assert done.step == len(done.plan)
    final = world.router.tables[-1]
    assert [(p.version, p.weight > 0, len(p.backends)) for p in final.pools] == [("v2", True, 3)]
    assert world.router.shares() == {"v2": 100.0}
    assert world.running("v1") == [] and world.running("v2") == [0, 1, 2]
    assert sorted(i.id for i, _ in world.platform.stopped) == sorted(v1_instances)
    assert all(grace == 3.0 for _, grace in world.platform.stopped)
    assert world.stored("v1") == []
    assert world.stored("v2") == [(0, "ready"), (1, "ready"), (2, "ready")]
    assert world.store.stable("shop") == world.rev("v2")
    # Never fewer than 3 serving backends while the traffic moved (max_unavailable 0).
    assert all(len(t.backend_ids()) >= 3 for t in world.router.tables[1:])
    assert world.events[-1].kind == "succeeded"


async def test_progress_is_stored_after_every_step(world: World) -> None:
    await first_release(world)
    done = await world.deploy("v2", kind="rolling")
    total = len(done.plan)
    assert [shown for shown, _ in world.progress] == list(range(1, total + 1))
    # When step N is announced, the store already says N-1 steps are done.
    assert all(stored == shown - 1 for shown, stored in world.progress)
    steps = [e for e in world.store.events(done.id) if e.kind == "step"]
    assert [e.step for e in steps] == list(range(total))


# -- resuming ------------------------------------------------------------------------

async def test_resume_at_a_start_step_does_not_restart_what_already_runs(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", kind="rolling")
    # The control plane died right after starting slot 0, before it stored step 1.
    revision = world.store.revision(world.rev("v2"))
    assert revision is not None
    early = await world.platform.start(revision, slot=0)
    world.store.put_instance(early, state="starting")
    assert record.step == 0

    done = await world.executor().run(record)
    assert done.phase == "succeeded", done.message
    assert world.platform.starts("v2", slot=0) == 1
    assert world.platform.starts("v2") == 3
    assert early in world.platform.live()


async def test_interrupted_canary_resumes_at_its_stored_step(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    canary = [i for i in world.platform.live() if i.version == "v2"]
    task.cancel()  # the control plane dies while paused
    with pytest.raises(asyncio.CancelledError):
        await task

    stored = world.store.deployment(record.id)
    assert stored is not None
    assert isinstance(load_plan(stored.plan)[stored.step], Pause)
    world.store.request(record.id, "promote")
    done = await world.executor().run(stored)
    assert done.phase == "succeeded", done.message
    assert world.platform.starts("v2", slot=0) == 1  # the canary was kept, not restarted
    assert world.platform.starts("v2") == 3
    assert set(canary) <= set(world.platform.live())
    assert world.router.shares() == {"v2": 100.0}


# -- failures roll back ----------------------------------------------------------------

async def test_new_revision_that_never_becomes_healthy_rolls_back(world: World) -> None:
    await first_release(world)
    v1_before = world.platform.live()
    world.platform.unhealthy.add("v2")
    began = world.clock.now()
    done = await world.deploy("v2", kind="rolling")
    assert done.phase == "failed"
    assert "not healthy after 20s" in done.message and "answered 500" in done.message
    assert world.clock.now() - began >= 20
    assert world.router.shares() == {"v1": 100.0}
    assert world.router.tables[-1].weights() == {world.rev("v1"): 100}
    assert world.running("v2") == [] and world.stored("v2") == []
    assert world.platform.live() == v1_before  # the old fleet never stopped
    assert world.platform.starts("v1") == 3
    assert world.store.stable("shop") == world.rev("v1")
    assert any(e.kind == "rollback" for e in world.events)


async def test_new_instance_that_exits_fails_fast_with_its_log(world: World) -> None:
    await first_release(world)
    world.platform.exit_on_start.add("v2")
    began = world.clock.now()
    done = await world.deploy("v2", kind="rolling")
    assert done.phase == "failed"
    assert "exited before it became healthy" in done.message
    assert "exited with status 1" in done.message  # the log tail
    assert world.clock.now() - began < 20  # no waiting for the health deadline
    assert world.router.shares() == {"v1": 100.0}


async def test_start_error_rolls_back(world: World) -> None:
    await first_release(world)
    world.platform.fail_start.add("v2")
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 10}])
    assert done.phase == "failed"
    assert "told to fail" in done.message
    assert world.router.shares() == {"v1": 100.0}


async def test_failed_first_release_leaves_an_empty_table(world: World) -> None:
    world.platform.unhealthy.add("v1")
    done = await world.deploy("v1")
    assert done.phase == "failed"
    assert done.previous_revision is None
    assert world.router.tables[-1].pools == ()
    assert world.platform.live() == [] and world.stored("v1") == []
    assert world.store.stable("shop") is None


async def test_failed_big_bang_starts_the_previous_fleet_again(world: World) -> None:
    await first_release(world)
    world.platform.unhealthy.add("v2")
    done = await world.deploy("v2", kind="big-bang")
    assert done.phase == "failed"
    assert world.platform.starts("v1") == 6  # big bang stopped them; restore started them
    assert world.running("v1") == [0, 1, 2] and world.running("v2") == []
    assert world.router.shares() == {"v1": 100.0}
    assert world.store.stable("shop") == world.rev("v1")


# -- abort and promote -----------------------------------------------------------------

async def test_abort_request_during_a_pause_restores_the_previous_version(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    assert world.router.tables[-1].weights() == {world.rev("v2"): 34, world.rev("v1"): 66}
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert done.phase == "aborted"
    assert "aborted by request" in done.message
    assert world.router.shares() == {"v1": 100.0}
    assert world.running("v2") == [] and world.running("v1") == [0, 1, 2]
    assert world.platform.starts("v1") == 3
    assert world.store.stable("shop") == world.rev("v1")


async def test_request_abort_in_process_interrupts_a_pause(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    executor = world.executor()
    task = asyncio.create_task(executor.run(record))
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    executor.request_abort()
    done = await finish(task)
    assert done.phase == "aborted" and done.message == "interrupted"
    assert world.router.shares() == {"v1": 100.0}


async def test_halt_stops_a_pause_where_it_stands_and_undoes_nothing(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    executor = world.executor()
    task = asyncio.create_task(executor.run(record))
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    tables, running = len(world.router.tables), (world.running("v1"), world.running("v2"))
    executor.halt("lost the deployment lock of shop: taken over by deploy@ci-2 pid 7")
    with pytest.raises(ConflictError, match="taken over by deploy@ci-2 pid 7"):
        await finish(task)
    stored = world.store.deployment(record.id)
    assert stored is not None and stored.phase == "paused" and stored.active  # for the new holder
    assert len(world.router.tables) == tables and world.router.tables[-1].weights() == {
        world.rev("v2"): 34, world.rev("v1"): 66}
    assert (world.running("v1"), world.running("v2")) == running and running[1] != []
    assert world.store.stable("shop") == world.rev("v1")


async def test_promote_request_ends_a_pause_without_duration(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    paused_at = world.clock.now()
    await until(lambda: world.clock.now() > paused_at + 60, "a minute passes")
    assert not task.done()  # a pause without duration does not end by itself
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "succeeded", done.message
    assert not done.promote_requested  # the request was used up
    assert world.router.shares() == {"v2": 100.0}
    assert world.running("v1") == []


# -- gates -----------------------------------------------------------------------------

@pytest.mark.parametrize(("errors", "phase"), [(0, "succeeded"), (50, "failed")])
async def test_gate_during_a_canary_pause(world: World, errors: int, phase: str) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(100, errors=errors))
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"pause": "60s"}])
    assert done.phase == phase, done.message
    if phase == "failed":
        assert "gate" in done.message and "50.0%" in done.message
        assert world.router.shares() == {"v1": 100.0}
        assert world.running("v2") == []
        assert any(e.kind == "gate" and e.message.startswith("Failed") for e in world.events)
    else:
        assert world.router.shares() == {"v2": 100.0}


async def test_gate_fails_on_slow_responses(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(100, latency=3.0))
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"pause": "60s"}])
    assert done.phase == "failed"
    assert "gate" in done.message and "p99" in done.message


async def test_inconclusive_gate_at_the_end_of_a_pause_waits_for_promote(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(1))  # far fewer than the gate's 20 requests
    record = await world.create("v2", kind="canary", steps=[{"weight": 50}, {"pause": "60s"}])
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the pause ends inconclusive")
    began = world.clock.now()
    await until(lambda: world.clock.now() > began + 600, "ten more minutes pass")
    assert not task.done()  # it never promotes by itself
    paused = world.store.deployment(record.id)
    assert paused is not None and paused.message.startswith("inconclusive: ")
    assert "fewer than the 20 needed" in paused.message
    assert world.router.shares() == {"v2": 50.0, "v1": 50.0}
    assert any(e.kind == "paused" and "Inconclusive" in e.message for e in world.events)
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "succeeded", done.message
    assert world.router.shares() == {"v2": 100.0}


async def test_abort_while_held_inconclusive_restores_the_previous_version(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", kind="canary", steps=[{"weight": 50}, {"pause": "30s"}])
    task = world.start(record)  # no traffic at all reaches the canary
    await until(phase_is(world, record.id, "paused"), "the pause ends inconclusive")
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert done.phase == "aborted", done.message
    assert world.router.shares() == {"v1": 100.0}
    assert world.running("v2") == []


async def test_a_held_canary_is_still_watched_and_fails_on_errors(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(1))
    record = await world.create("v2", kind="canary", steps=[{"weight": 50}, {"pause": "30s"}])
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the pause ends inconclusive")
    world.router.flow(world.rev("v2"), traffic(10, errors=5))
    done = await finish(task)
    assert done.phase == "failed" and "gate failed" in done.message
    assert world.router.shares() == {"v1": 100.0}


async def test_a_pause_shorter_than_the_gate_interval_is_still_judged(world: World) -> None:
    await first_release(world)
    steps = [{"weight": 50}, {"pause": "1s"}]  # the gate looks every 5s by default
    record = await world.create("v2", kind="canary", steps=steps)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the short pause ends inconclusive")
    world.store.request(record.id, "promote")
    assert (await finish(task)).phase == "succeeded"
    world.router.flow(world.rev("v3"), traffic(30))
    done = await world.deploy("v3", kind="canary", steps=steps)
    assert done.phase == "succeeded", done.message  # enough traffic: it goes on alone


async def test_inconclusive_analysis_pauses_until_promote(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(1))  # far fewer than min_requests
    steps = [{"weight": 50}, {"analysis": {"duration": "30s", "min_requests": 50}}]
    record = await world.create("v2", kind="canary", steps=steps)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the analysis gives up")
    paused = world.store.deployment(record.id)
    assert paused is not None and "inconclusive" in paused.message
    assert world.router.shares() == {"v2": 50.0, "v1": 50.0}
    assert not task.done()
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "succeeded", done.message
    assert world.router.shares() == {"v2": 100.0}


async def test_failed_analysis_rolls_back(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v2"), traffic(40, errors=10))
    steps = [{"weight": 50}, {"analysis": {"duration": "30s", "max_error_rate": 0.05}}]
    done = await world.deploy("v2", kind="canary", steps=steps)
    assert done.phase == "failed"
    assert "analysis failed" in done.message
    assert world.router.shares() == {"v1": 100.0}


COMPARED = {"max_error_rate_increase": "1%", "max_p99_increase": "50ms", "interval": "1s",
            "min_requests": 50, "max_error_rate": "5%"}


async def test_a_background_analysis_rolls_back_a_canary_worse_than_its_baseline(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v1"), traffic(400, errors=4))  # 1% at every reading
    world.router.flow(world.rev("v2"), traffic(100, errors=8))  # 8%
    gate = {"interval": "60s"}  # the pause's own gate would look only at its end
    began = world.clock.now()
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 20}, {"pause": "10m"}],
                              gate=gate, analysis=COMPARED)
    assert done.phase == "failed", done.message
    assert done.message.startswith("analysis failed: ") and "error rate" in done.message
    assert world.clock.now() - began < 120  # long before the pause's end
    assert world.router.shares() == {"v1": 100.0}
    failed = [e for e in world.events if e.kind == "gate" and e.message.startswith("Failed")]
    assert failed and failed[0].data["evidence"]["judge"] == "sequential"


async def test_a_background_analysis_lets_an_equal_canary_through_and_records_its_decision(
    world: World,
) -> None:
    await first_release(world)
    for version in ("v1", "v2"):
        world.router.flow(world.rev(version), traffic(200, errors=2))  # 1% on both sides
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"pause": "30s"}],
                              analysis=COMPARED)
    assert done.phase == "succeeded", done.message
    decisions = [e for e in world.events if e.kind == "gate"]
    assert decisions[-1].data["subject"] == world.rev("v2")
    assert decisions[-1].data["evidence"]["compared"] is True


async def test_a_deployment_waits_for_its_background_analysis_to_pass(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", kind="rolling", analysis={**COMPARED, "max_wait": "30s"})
    task = world.start(record)  # a rolling deployment: no pause to wait in
    await until(lambda: any("waiting up to 30s" in e.message for e in world.events), "it waits")
    began = world.clock.now()
    await until(phase_is(world, record.id, "paused"), "after 30 s it is held for a human")
    assert world.clock.now() - began >= 25  # not at once: it waited (the clock ran meanwhile)
    held = world.store.deployment(record.id)
    assert held is not None and held.message.startswith("waiting for the analysis to pass")
    assert not task.done()
    for version in ("v1", "v2"):  # traffic comes: v1 still serves while v2's fleet is whole
        world.router.flow(world.rev(version), traffic(300))
    done = await finish(task)
    assert done.phase == "succeeded", done.message


async def test_a_gate_comparing_with_the_baseline_uses_the_sequential_judge(world: World) -> None:
    await first_release(world)
    world.router.flow(world.rev("v1"), traffic(200, latency=0.02))
    world.router.flow(world.rev("v2"), traffic(200, latency=0.3))
    gate = {"max_p99_increase": "50ms", "interval": "1s", "max_p99": "5s"}
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"pause": "30s"}], gate=gate)
    assert done.phase == "failed", done.message
    assert "gate failed" in done.message and "p99" in done.message


async def test_a_silent_canary_fails_after_so_many_looks_when_asked(world: World) -> None:
    await first_release(world)  # no traffic reaches v2 at all
    gate = {"interval": "1s", "max_silent_intervals": 3}
    began = world.clock.now()
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"pause": "30s"}], gate=gate)
    assert done.phase == "failed", done.message
    assert "no data" in done.message and "3 looks in a row" in done.message
    assert world.clock.now() - began < 10


# -- blue-green and restore ------------------------------------------------------------

async def test_blue_green_keeps_blue_warm_for_the_rollback_window(world: World) -> None:
    await first_release(world)
    done = await world.deploy("v2", kind="blue-green", rollback_window="2m")
    assert done.phase == "succeeded", done.message
    assert world.router.shares() == {"v2": 100.0}
    assert world.running("v1") == [0, 1, 2]  # blue still runs, out of traffic
    records = [r for r in world.store.instances("shop") if r.instance.version == "v1"]
    assert [r.state for r in records] == ["warm"] * 3
    assert all(r.warm_until == pytest.approx(world.clock.wall() + 120) for r in records)
    assert world.stored("v2") == [(0, "ready"), (1, "ready"), (2, "ready")]
    preview = [t for t in world.router.tables if t.preview == world.rev("v2")]
    assert preview and preview[0].share(world.rev("v2")) == 0.0


async def test_restore_of_a_warm_previous_revision_is_one_table_flip(world: World) -> None:
    await first_release(world)
    done = await world.deploy("v2", kind="blue-green", rollback_window="5m")
    applies, starts = len(world.router.tables), len(world.platform.started)

    await world.executor().restore(done)
    assert len(world.router.tables) == applies + 1
    assert len(world.platform.started) == starts
    assert world.router.shares() == {"v1": 100.0}
    assert world.running("v2") == [] and world.stored("v2") == []
    assert world.stored("v1") == [(0, "ready"), (1, "ready"), (2, "ready")]
    assert world.store.stable("shop") == world.rev("v1")


async def test_a_restore_that_fails_is_rollback_failed_and_says_what_serves(world: World) -> None:
    await first_release(world)
    world.platform.unhealthy.add("v2")
    world.platform.fail_start.add("v1")  # big bang stopped v1, and it cannot start again
    done = await world.deploy("v2", kind="big-bang")
    assert done.phase == "rollback-failed"
    assert "restoring the previous version failed too" in done.message and "told to fail" in done.message
    assert done.message.endswith("now serving: nothing (the router's table sends no traffic anywhere)")
    assert world.store.history("shop", limit=1)[0].phase == "rollback-failed"
    assert world.store.active_deployment("shop") is None  # a final phase
    assert any(e.kind == "failed" and "now serving" in e.message for e in world.events)


async def test_an_abort_whose_restore_fails_names_the_split_in_effect(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    world.router.fail_apply = "router refused the table"
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert done.phase == "rollback-failed"
    assert "router refused the table" in done.message
    assert done.message.endswith("now serving: v2 34% (2 of 2 instances running), "
                                 "v1 66% (3 of 3 instances running)")


async def test_busy_old_instance_is_stopped_after_the_drain_timeout(world: World) -> None:
    await first_release(world)
    busy = f"{world.rev('v1')}-0"
    world.router.busy.add(busy)
    began = world.clock.now()
    done = await world.deploy("v2", kind="rolling")
    assert done.phase == "succeeded"
    assert world.clock.now() - began >= 10
    assert any(e.kind == "warning" and busy in e.message for e in world.events)
    assert world.running("v1") == []


async def test_blue_green_tests_on_the_preview_address_gate_the_switch(world: World) -> None:
    answers = {"/smoke": 200, "/broken": 503}

    def preview(request: httpx.Request) -> httpx.Response | None:
        if f"{request.url.host}:{request.url.port}" != world.spec.preview_listen():
            return None
        return httpx.Response(answers.get(request.url.path, 404))

    await first_release(world)
    world.http = fake_http(world.platform, other=preview)
    async with world.http:
        done = await world.deploy("v2", kind="blue-green", tests=[{"http": "/smoke"}])
        assert done.phase == "succeeded", done.message
        done = await world.deploy("v3", kind="blue-green", tests=[{"http": "/broken"}])
    assert done.phase == "failed"
    assert "expected 200, got 503" in done.message
    assert world.router.shares() == {"v2": 100.0}
    assert world.running("v3") == []


def preview_answering(w: World, green_traffic: Counters) -> Callable[[httpx.Request], httpx.Response | None]:
    """The preview address, as the router counts it: every test request there brings
    `green_traffic` to the green fleet (a smoke test that answers 200 while the load the
    tests send meets errors)."""
    def preview(request: httpx.Request) -> httpx.Response | None:
        if f"{request.url.host}:{request.url.port}" != w.spec.preview_listen():
            return None
        w.router.count(w.rev("v2"), green_traffic)
        return httpx.Response(200)
    return preview


PREVIEW_ANALYSIS = {"duration": "5s", "max_error_rate": "5%", "min_requests": 20}


async def test_blue_green_judges_the_green_fleets_test_traffic_before_the_switch(world: World) -> None:
    await first_release(world)
    world.http = fake_http(world.platform, other=preview_answering(world, traffic(30, errors=15)))
    async with world.http:
        done = await world.deploy("v2", kind="blue-green", tests=[{"http": "/smoke"}],
                                  preview_analysis=PREVIEW_ANALYSIS)
    assert done.phase == "failed", done.message
    assert done.message.startswith("analysis failed") and "error rate" in done.message
    assert world.router.shares() == {"v1": 100.0}  # never switched
    assert all(t.share(world.rev("v2")) == 0 for t in world.router.tables)
    assert any("on its preview traffic since the preview opened" in e.message for e in world.events)


async def test_blue_green_switches_once_the_test_traffic_passed_its_analysis(world: World) -> None:
    await first_release(world)
    world.http = fake_http(world.platform, other=preview_answering(world, traffic(30)))
    async with world.http:
        done = await world.deploy("v2", kind="blue-green", tests=[{"http": "/smoke"}],
                                  preview_analysis=PREVIEW_ANALYSIS)
    assert done.phase == "succeeded", done.message
    verdicts = [e.data["verdict"] for e in world.events if e.kind == "gate"]
    assert verdicts == ["Successful"]  # judged once, at the end of its 5 s, on the tests' 30
    steps = [e.message for e in world.events if e.kind == "step"]
    assert any(m.startswith(f"analyse {world.rev('v2')} on its preview traffic") for m in steps)


async def test_a_toggle_gate_fails_at_once_when_its_code_takes_down_every_user(world: World) -> None:
    await first_release(world)
    # The flag's few users and everyone else alike: connections refused (a crashed process).
    world.router.flow("flag:new-checkout:on", traffic(2, connection_errors=2))
    world.router.flow("flag:new-checkout:off", traffic(60, connection_errors=60))
    gate = {"interval": "1s", "max_error_rate_increase": "1%", "min_requests": 50}
    began = world.clock.now()
    done = await world.deploy("v2", **{**TOGGLE, "ramp": [{"users": ["alice"]}, {"pause": "5m"}]},
                              gate=gate)
    assert done.phase == "failed", done.message
    assert "both cohorts together" in done.message
    assert world.clock.now() - began < 30  # the cohort's own 2 a second would need far longer
    assert not flag_on(world, "alice")


# -- problems found and fixed: these keep them fixed ----

async def test_an_instance_that_exits_fails_its_batch_without_waiting_for_the_others(
    world: World,
) -> None:
    await first_release(world)
    world.platform.exit_on_start.add(f"{world.rev('v2')}-0")
    world.platform.unhealthy.add(f"{world.rev('v2')}-1")
    began = world.clock.now()
    done = await world.deploy("v2", kind="big-bang")
    assert done.phase == "failed" and "exited" in done.message
    assert world.clock.now() - began < 20


async def test_abort_after_the_fleet_shrank_leaves_no_unrouted_old_instance(world: World) -> None:
    await first_release(world)
    world.spec = world.spec.model_copy(update={"instances": 2})
    record = await world.create("v2", kind="canary", steps=[{"weight": 50}, {"pause": "forever"}])
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert done.phase == "aborted"
    routed = world.router.tables[-1].backend_ids()
    assert {i.id for i in world.platform.live()} == routed


async def test_redeploying_the_stable_version_replaces_only_the_dead_instance(world: World) -> None:
    await first_release(world)
    world.platform.crash(next(i for i in world.platform.live() if i.slot == 1))
    try:
        done = await world.deploy("v1", kind="rolling")
        assert done.phase == "succeeded", done.message
        assert world.running("v1") == [0, 1, 2]
        assert world.journal.stopped_while_routed == []
    finally:
        world.journal.stopped_while_routed.clear()  # keep the fixture's own check quiet


# -- feature toggle ------------------------------------------------------------------

TOGGLE: dict[str, Any] = {"kind": "feature-toggle", "flag": "new-checkout", "ship": "rolling",
                          "ramp": [{"users": ["alice"]}, {"pause": "10s"}, {"percent": 30}, {"pause": "10s"}]}


def flag_on(w: World, user: str) -> bool:
    assert w.flags is not None
    return evaluate(FlagState.from_json(w.flags.state()), "new-checkout", {"userId": user}).enabled


async def test_feature_toggle_ships_dark_then_ramps_to_everyone(world: World) -> None:
    await first_release(world)
    world.router.flow("flag:new-checkout:on", traffic(40))  # the cohort's traffic passes the gate
    seen: list[tuple[bool, bool]] = []  # (alice on, bob on) at every push to the router

    done = await world.deploy("v2", **TOGGLE)
    assert done.phase == "succeeded", done.message
    assert world.store.stable("shop") == world.rev("v2")
    for state, evaluated, header in world.router.flag_pushes:
        flags = FlagState.from_json(state)
        seen.append((evaluate(flags, "new-checkout", {"userId": "alice"}).enabled,
                     evaluate(flags, "new-checkout", {"userId": "bob-7"}).enabled))
        assert evaluated == ["new-checkout"] and header == "X-Turnout-Flags"
    assert seen[0] == (False, False)  # shipped dark
    assert seen[1] == (True, False)  # the named user first
    assert seen[-1] == (True, True)  # everyone at the end
    assert all(flag_on(world, f"user-{i}") for i in range(50))
    assert world.flags is not None
    assert world.flags.history("new-checkout")[-1].who.startswith("turnout deploy")


async def test_a_toggle_the_app_evaluates_ramps_in_the_store_and_tells_the_router_nothing(
    world: World,
) -> None:
    await first_release(world)
    world.router.flow("flag:new-checkout:on", traffic(40))  # as the app's metrics would count it
    done = await world.deploy("v2", **TOGGLE, evaluated_by="app")
    assert done.phase == "succeeded", done.message
    assert world.router.flag_pushes == []  # the app's SDK gets the flag from the server
    assert all(flag_on(world, f"user-{i}") for i in range(50))
    assert world.flags is not None
    assert len(world.flags.history("new-checkout")) >= 4  # off, alice, 30%, everyone: each stored


async def test_feature_toggle_gate_switches_the_flag_off_and_keeps_the_code(world: World) -> None:
    await first_release(world)
    world.router.flow("flag:new-checkout:on", traffic(40, errors=20))  # the new path fails
    done = await world.deploy("v2", **TOGGLE)
    assert done.phase == "failed" and "gate" in done.message
    assert not flag_on(world, "alice") and not any(flag_on(world, f"u{i}") for i in range(50))
    assert world.store.stable("shop") == world.rev("v2")  # the dark code stays; only the flag went off
    assert world.running("v2") == [0, 1, 2] and world.running("v1") == []


async def test_feature_toggle_abort_during_the_ramp_switches_the_flag_off(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **{**TOGGLE, "ramp": [{"users": ["alice"]}, {"pause": None}]})
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the ramp pauses")
    assert flag_on(world, "alice")
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert done.phase == "aborted"
    assert not flag_on(world, "alice")


async def test_every_table_carries_the_specs_limits_timeouts_and_forwarding(world: World) -> None:
    routing = {"drain_timeout": "10s", "limits": {"max_header_size": "16KiB", "max_connections": 50},
               "timeouts": {"header": "3s", "response": "45s"}, "buffer_requests": "2MiB",
               "trust_forwarded": False}
    world.spec = Spec.model_validate({**SPEC, "routing": routing})
    await first_release(world)
    done = await world.deploy("v2", kind="canary", steps=[{"weight": 50}, {"weight": 100}])
    assert done.phase == "succeeded", done.message
    for table in world.router.tables:
        assert table.limits.max_header_size == 16 * 1024 and table.limits.max_connections == 50
        assert (table.timeouts.header, table.timeouts.response, table.timeouts.idle) == (3.0, 45.0, 75.0)
        assert table.buffer_requests == 2 * 1024 * 1024 and table.trust_forwarded is False


# -- hosts lost during a deployment ------------------------------------------------------

def on_two_hosts(w: World, *, may_lose: int) -> None:
    """Four instances, two per host (127.0.0.1 and 127.0.0.2), `may_lose` hosts allowed."""
    w.spec = Spec.model_validate({**SPEC, "instances": 4, "platform": {
        "kind": "ssh", "hosts": ["127.0.0.1", "127.0.0.2"], "instances_per_host": 2,
        "max_unavailable_hosts": may_lose}})
    w.platform.per_host = 2


def routed_hosts(w: World) -> set[str]:
    table = w.router.tables[-1]
    return {b.address.rsplit(":", 1)[0] for p in table.pools if p.weight for b in p.backends}


async def test_a_host_lost_during_a_deployment_rolls_back_on_the_hosts_left(world: World) -> None:
    on_two_hosts(world, may_lose=0)
    await first_release(world)
    assert routed_hosts(world) == {"127.0.0.1", "127.0.0.2"}
    record = await world.create("v2", kind="rolling", max_surge=2, max_unavailable=0)
    world.platform.lost_hosts.add("127.0.0.2")  # once the deployment has begun
    done = await world.executor().run(record)
    assert done.phase == "failed"
    assert "127.0.0.2" in done.message and "max_unavailable_hosts is 0" in done.message
    assert world.router.shares() == {"v1": 100.0}
    assert routed_hosts(world) == {"127.0.0.1"}  # the router no longer sends to the lost host
    assert world.running("v2") == []
    assert any(e.kind == "warning" and "host 127.0.0.2 lost" in e.message for e in world.events)
    # The host is back: its v1 instances are found again, nothing of v2 is there.
    world.platform.lost_hosts.clear()
    again = world.executor()
    await again.refresh()
    assert sorted(again.fleet[world.rev("v1")]) == [0, 1, 2, 3]


async def test_with_max_unavailable_hosts_a_deployment_goes_on_without_the_lost_host(
    world: World,
) -> None:
    on_two_hosts(world, may_lose=1)
    await first_release(world)
    record = await world.create("v2", kind="rolling", max_surge=2, max_unavailable=0)
    world.platform.lost_hosts.add("127.0.0.2")
    done = await world.executor().run(record)
    assert done.phase == "succeeded", done.message
    assert world.router.shares() == {"v2": 100.0}
    assert routed_hosts(world) == {"127.0.0.1"}
    assert world.running("v2") == [0, 1]
    assert any("slot 2 not started: its host is lost" in e.message for e in world.events)


async def test_a_host_lost_before_a_deployment_refuses_it_naming_the_host(world: World) -> None:
    on_two_hosts(world, may_lose=0)
    await first_release(world)
    world.platform.lost_hosts.add("127.0.0.2")
    with pytest.raises(PlatformError, match=r"127\.0\.0\.2 .*max_unavailable_hosts is 0"):
        await world.executor().refresh()


# -- instances that die between steps (found by `turnout demo --faults`) --------------------

def crash_all(w: World, version: str) -> list[str]:
    """Every live instance of `version` dies; their ids."""
    dead = [i for i in w.platform.live() if i.version == version]
    for instance in dead:
        w.platform.crash(instance)
    assert dead
    return [i.id for i in dead]


def executor_seeing(w: World, hook: Callable[[Event], None]) -> Executor:
    """An executor whose every event is also passed to `hook` (after the world's own)."""
    def emit(event: Event) -> None:
        w.emit(event)
        hook(event)
    return Executor(spec=w.spec, store=w.store, platform=w.platform, router=w.router, clock=w.clock,
                    emit=emit, http=w.http, source=RouterCounters(w.router), judge=ComparingJudge(),
                    flags=w.flags)


def routed_addresses(w: World) -> set[str]:
    return {b.address for p in w.router.tables[-1].pools if p.weight for b in p.backends}


async def test_a_canary_whose_instances_died_is_rolled_back_not_promoted(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **CANARY_HOLD)
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    dead = crash_all(world, "v2")  # both canary instances, during the pause
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "failed", done.message
    assert "no longer run before the traffic change" in done.message
    assert all(name in done.message for name in dead)
    assert "exited with status 1" in done.message  # the end of one's log
    assert all(t.share(world.rev("v2")) < 100 for t in world.router.tables)  # never all traffic
    assert world.store.stable("shop") == world.rev("v1")
    assert world.router.shares() == {"v1": 100.0}
    assert world.running("v2") == [] and world.running("v1") == [0, 1, 2]


async def test_a_fleet_that_dies_once_switched_to_is_not_promoted(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", kind="blue-green", rollback_window="2m")
    dead: list[str] = []

    def crash_on_switch(event: Event) -> None:
        if event.kind == "traffic" and event.data["shares"] == {"v2": 100.0}:
            dead.extend(crash_all(world, "v2"))  # between the switch and the Promote step

    done = await executor_seeing(world, crash_on_switch).run(record)
    assert dead and done.phase == "failed", done.message
    assert "no longer run before the promotion" in done.message
    assert all(name in done.message for name in dead)
    assert world.store.stable("shop") == world.rev("v1")
    assert world.router.shares() == {"v1": 100.0}
    assert world.platform.starts("v1") == 3  # blue was warm: a table flip back


async def test_a_dead_instance_of_the_stable_fleet_is_left_out_of_the_next_table(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", kind="canary",
                                steps=[{"weight": 34}, {"pause": "forever"}, {"weight": 67}])
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    old = next(i for i in world.platform.live() if i.version == "v1" and i.slot == 1)
    world.platform.crash(old)
    applied = len(world.router.tables)
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "succeeded", done.message  # not the canary's fault: it goes on
    at_67 = world.router.tables[applied]
    assert at_67.weights() == {world.rev("v2"): 67, world.rev("v1"): 33}
    stable = at_67.pool(world.rev("v1"))
    assert stable is not None and [b.id for b in stable.backends] == [
        f"{world.rev('v1')}-0", f"{world.rev('v1')}-2"]
    warnings = [e.message for e in world.events if e.kind == "warning" and old.id in e.message]
    assert warnings == [f"{old.id} no longer run: left out of the table"]


def toggle_held(w: World) -> dict[str, Any]:
    """A toggle whose pause ends held (too thin to judge), so a test can act before the gate
    fails on the errors it sets next."""
    w.router.flow("flag:new-checkout:on", traffic(1))
    return {**TOGGLE, "ramp": [{"users": ["alice"]}, {"pause": "10s"}]}


async def test_a_toggle_whose_kept_code_died_starts_it_again_in_place(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **toggle_held(world))
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the ramp's pause ends held")
    crash_all(world, "v2")  # the new code path crashed every process
    world.router.flow("flag:new-checkout:on", traffic(40, errors=20))
    done = await finish(task)
    assert done.phase == "failed" and "gate" in done.message, done.message  # exit 3
    assert not flag_on(world, "alice")
    assert world.store.stable("shop") == world.rev("v2")  # the code stays, dark, and serves
    assert world.running("v2") == [0, 1, 2] and world.platform.starts("v2") == 6
    assert routed_addresses(world) == {i.address for i in world.platform.live()}
    assert world.running("v1") == []
    said = [e.message for e in world.events if e.kind in ("rollback", "info")]
    assert any("is gone" in m and "starting it again in place" in m for m in said)
    assert any("serves again, dark" in m for m in said)


async def test_a_toggle_whose_kept_code_cannot_start_again_restores_the_previous_version(
    world: World,
) -> None:
    await first_release(world)
    record = await world.create("v2", **toggle_held(world))
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the ramp's pause ends held")
    crash_all(world, "v2")
    world.platform.fail_start.add("v2")
    world.router.flow("flag:new-checkout:on", traffic(40, errors=20))
    done = await finish(task)
    assert done.phase == "failed" and "gate" in done.message, done.message  # exit 3, not 1
    assert not flag_on(world, "alice")
    assert world.store.stable("shop") == world.rev("v1")
    assert world.router.shares() == {"v1": 100.0} and world.running("v1") == [0, 1, 2]
    assert routed_addresses(world) == {i.address for i in world.platform.live()}
    assert any(e.kind == "rollback" and "restoring the previous version" in e.message
               for e in world.events)


async def test_a_toggle_whose_kept_instance_fails_its_health_check_replaces_it(world: World) -> None:
    await first_release(world)
    record = await world.create("v2", **toggle_held(world))
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the ramp's pause ends held")
    sick = next(i for i in world.platform.live() if i.version == "v2" and i.slot == 1)
    world.platform.unhealthy.add(sick.id)  # wedged: alive, but its health check answers 500
    world.router.flow("flag:new-checkout:on", traffic(40, errors=20))
    done = await finish(task)
    assert done.phase == "failed", done.message
    assert sick in [i for i, _ in world.platform.stopped]  # out of the table first (fixture check)
    assert any(f"{sick.id} failed its health check" in e.message for e in world.events)
    # Its replacement in slot 1 is no healthier: the previous version is restored.
    assert world.store.stable("shop") == world.rev("v1")
    assert world.router.shares() == {"v1": 100.0}


async def test_a_fleet_that_dies_after_its_promotion_fails_the_deployment_at_its_end(
    world: World,
) -> None:
    await first_release(world)
    record = await world.create("v2", kind="blue-green", rollback_window="2m")
    dead: list[str] = []

    def crash_at_the_last_step(event: Event) -> None:
        if event.kind == "step" and event.step == event.total:  # keep blue warm, after Promote
            dead.extend(crash_all(world, "v2"))

    done = await executor_seeing(world, crash_at_the_last_step).run(record)
    assert dead and done.phase == "failed", done.message
    assert "no longer run at the end of the deployment" in done.message
    assert all(name in done.message for name in dead)
    assert not any(e.kind == "succeeded" for e in world.events)
    assert world.store.stable("shop") == world.rev("v1")
    assert world.router.shares() == {"v1": 100.0} and world.platform.starts("v1") == 3


async def test_a_canary_at_full_weight_goes_on_when_the_stable_fleet_it_no_longer_needs_died(
    world: World,
) -> None:
    await first_release(world)
    record = await world.create("v2", kind="canary",
                                steps=[{"weight": 34}, {"pause": "forever"}, {"weight": 100}])
    task = world.start(record)
    await until(phase_is(world, record.id, "paused"), "the canary pauses")
    dead = crash_all(world, "v1")  # its pool keeps weight 0 in the 100% step's table
    world.store.request(record.id, "promote")
    done = await finish(task)
    assert done.phase == "succeeded", done.message
    assert world.router.shares() == {"v2": 100.0} and world.running("v2") == [0, 1, 2]
    warned = [e.message for e in world.events if e.kind == "warning"]
    assert warned == [f"{', '.join(dead)} no longer run: left out of the table"]
