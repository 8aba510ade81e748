"""The executor: runs a plan step by step, stores progress after each, rolls back by itself.

Every step is safe to run twice, because the executor re-reads the world (which
instances really run) before it acts: a plan interrupted by a SIGKILL resumes at the
stored step. A failed step, a failed gate, `turnout abort` or Ctrl-C all end in
`restore()`, which brings the previous revision back to all traffic: when its instances
are still warm that is a single table flip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx

from turnout.analysis.gates import Judgement, Thresholds, Verdict, judge
from turnout.clock import Clock
from turnout.engine import health
from turnout.engine.events import Emit, Event
from turnout.engine.flagsteps import flag_definition
from turnout.errors import PlatformError, RouterError, TurnoutError
from turnout.flags.store import FlagStore
from turnout.model import Instance, Revision
from turnout.plan import (
    Analyse,
    CohortSubject,
    Drain,
    KeepWarm,
    Pause,
    Promote,
    RevisionSubject,
    Route,
    RoutePool,
    RunTests,
    SetFlag,
    Start,
    Step,
    Stop,
    WaitHealthy,
    describe,
    load_plan,
)
from turnout.platforms.base import Platform
from turnout.routers.base import Counters, Router
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, UserKey
from turnout.spec import Spec
from turnout.store.db import DeploymentRecord, Store

T = TypeVar("T")
POLL = 0.2  # how often waits look for abort and promote requests


class StepFailed(Exception):
    """A step could not complete; the deployment rolls back."""


class Aborted(Exception):
    """`turnout abort`, Ctrl-C or SIGTERM asked the deployment to go back."""


class Executor:
    def __init__(
        self, *, spec: Spec, store: Store, platform: Platform, router: Router, clock: Clock,
        emit: Emit, http: httpx.AsyncClient, flags: FlagStore | None = None,
    ) -> None:
        self.spec, self.store, self.platform, self.router = spec, store, platform, router
        self.clock, self.emit, self.http, self.flags = clock, emit, http, flags
        self.fleet: dict[str, dict[int, Instance]] = {}
        self._abort = asyncio.Event()

    def request_abort(self) -> None:
        """Called from a signal handler: roll back at the next safe point."""
        self._abort.set()

    # -- the world ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read which instances really run; forget the records of the dead."""
        self.fleet = {}
        for record in self.store.instances(self.spec.service):
            instance = record.instance
            if await self.platform.alive(instance):
                self.fleet.setdefault(instance.revision, {})[instance.slot] = instance
            else:
                self.store.remove_instance(instance.id)

    def _instances(self, revision: str, slots: tuple[int, ...]) -> list[Instance]:
        running = self.fleet.get(revision, {})
        missing = [slot for slot in slots if slot not in running]
        if missing:
            raise StepFailed(f"{revision} slots {missing} are not running")
        return [running[slot] for slot in slots]

    def _revision(self, revision_id: str) -> Revision:
        revision = self.store.revision(revision_id)
        if revision is None:
            raise StepFailed(f"revision {revision_id} is not in the store")
        return revision

    # -- running a deployment -----------------------------------------------------

    async def run(self, deployment: DeploymentRecord) -> DeploymentRecord:
        """Run the plan from its stored step to the end; on failure or abort, restore."""
        plan = load_plan(deployment.plan)
        await self.refresh()
        try:
            for index in range(deployment.step, len(plan)):
                step = plan[index]
                self._check_abort(deployment.id)
                self.emit(Event("step", describe(step), step=index + 1, total=len(plan)))
                self.store.add_event(deployment.id, step=index, kind="step", message=describe(step))
                await self._run_step(deployment, step)
                self.store.update_deployment(deployment.id, step=index + 1, phase="progressing")
        except Aborted as exc:
            return await self.go_back(deployment, "aborted", str(exc) or "aborted")
        except (StepFailed, health.CheckFailed, TurnoutError) as exc:
            return await self.go_back(deployment, "failed", str(exc))
        done = self.store.update_deployment(deployment.id, phase="succeeded", message="")
        self.emit(Event("succeeded", f"{deployment.version} serves all traffic"))
        return done

    async def go_back(self, deployment: DeploymentRecord, phase: str, reason: str) -> DeploymentRecord:
        """End `deployment` in `phase` ("aborted" or "failed") with the previous version serving.

        When that cannot be done (the flag cannot be switched off, the previous version does not
        come back), the phase is "rollback-failed" and the message says what the router serves.
        """
        self.store.add_event(deployment.id, step=-1, kind=phase, message=reason)
        try:
            flags = {s.flag for s in load_plan(deployment.plan) if isinstance(s, SetFlag)}
            for flag in sorted(flags):  # first of all, the new code path goes dark
                await self.set_flag(SetFlag(flag=flag, enabled=False))
                self.emit(Event("rollback", f"{phase}: {reason}; flag {flag} switched off"))
            if flags and self.store.stable(self.spec.service) == deployment.target_revision:
                return self.store.update_deployment(deployment.id, phase=phase, message=reason)
            self.emit(Event("rollback", f"{phase}: {reason}; restoring the previous version"))
            await self.restore(deployment)
        except (StepFailed, health.CheckFailed, TurnoutError) as exc:
            serving = await self.serving()
            reason = f"{reason}; restoring the previous version failed too: {exc}; {serving}"
            phase = "rollback-failed"
            self.store.add_event(deployment.id, step=-1, kind=phase, message=reason)
            self.emit(Event("failed", f"restoring the previous version failed: {exc}; {serving}"))
        return self.store.update_deployment(deployment.id, phase=phase, message=reason)

    async def serving(self) -> str:
        """What the router's table sends traffic to now, and how much of it runs: for humans."""
        try:
            table = await self.router.table()
            await self.refresh()
        except TurnoutError as exc:
            return f"what serves now is unknown: {exc}"
        pools = [p for p in table.pools if p.weight] if table is not None else []
        if table is None or not pools:
            return "now serving: nothing (the router's table sends no traffic anywhere)"
        parts = []
        for pool in pools:
            running = self.fleet.get(pool.revision, {}).values()
            alive = sum(1 for b in pool.backends if b.id in {i.id for i in running})
            parts.append(f"{pool.version} {table.share(pool.revision):.0f}% "
                         f"({alive} of {len(pool.backends)} instances running)")
        return "now serving: " + ", ".join(parts)

    def _check_abort(self, deployment_id: int) -> None:
        if self._abort.is_set():
            raise Aborted("interrupted")
        record = self.store.deployment(deployment_id)
        if record is not None and record.abort_requested:
            raise Aborted("aborted by request")

    async def _wait(self, deployment_id: int, seconds: float | None, *, promote_ends: bool) -> bool:
        """Sleep up to `seconds` (None: forever) watching for abort; True if promoted."""
        end = None if seconds is None else self.clock.now() + seconds
        while end is None or self.clock.now() < end:
            self._check_abort(deployment_id)
            if promote_ends:
                record = self.store.deployment(deployment_id)
                if record is not None and record.promote_requested:
                    self.store.clear_request(deployment_id, "promote")
                    return True
            step = POLL if end is None else min(POLL, end - self.clock.now())
            await self.clock.sleep(max(0.0, step))
        return False

    async def _guard(self, deployment_id: int, work: Awaitable[T]) -> T:
        """Run `work`, but give up on it as soon as an abort is asked for."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                self._check_abort(deployment_id)
                await asyncio.wait({task}, timeout=POLL)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    # -- steps ------------------------------------------------------------------

    async def _run_step(self, deployment: DeploymentRecord, step: Step) -> None:
        match step:
            case Start():
                await self._guard(deployment.id, self._start(step.revision, step.slots))
            case WaitHealthy():
                await self._guard(deployment.id, self._wait_healthy(step.revision, step.slots))
            case Route():
                await self.route(step)
            case RunTests():
                await self._guard(deployment.id, self._run_tests(step))
            case Pause():
                await self._pause(deployment, step)
            case Analyse():
                await self._analyse(deployment, step)
            case Drain():
                await self._drain(self._instances_present(step.revision, step.slots))
            case Stop():
                await self._stop(self._instances_present(step.revision, step.slots))
            case Promote():
                self.store.set_stable(self.spec.service, step.revision)
                for instance in self.fleet.get(step.revision, {}).values():
                    self.store.set_instance_state(instance.id, "ready")  # a warm fleet flipped back
            case SetFlag():
                await self.set_flag(step)
            case KeepWarm():
                until = self.clock.wall() + step.seconds
                for instance in self._instances_present(step.revision, step.slots):
                    self.store.set_instance_state(instance.id, "warm", warm_until=until)

    def _instances_present(self, revision: str, slots: tuple[int, ...]) -> list[Instance]:
        running = self.fleet.get(revision, {})
        return [running[slot] for slot in slots if slot in running]

    async def _start(self, revision_id: str, slots: tuple[int, ...]) -> None:
        revision = self._revision(revision_id)
        running = self.fleet.setdefault(revision_id, {})
        for slot in slots:
            if slot in running:
                continue  # resumed: it was started before the interruption and still runs
            try:
                instance = await self.platform.start(revision, slot=slot)
            except PlatformError as exc:
                raise StepFailed(str(exc)) from exc
            self.store.put_instance(instance, state="starting")
            running[slot] = instance
            self.emit(Event("info", f"started {instance.id} on {instance.address} (pid {instance.pid})"))

    async def _wait_healthy(self, revision_id: str, slots: tuple[int, ...]) -> None:
        revision = self._revision(revision_id)
        instances = self._instances(revision_id, slots)
        checks = [
            health.wait_healthy(self.http, self.platform, i, revision.health, self.clock)
            for i in instances
        ]
        pairs = zip(checks, instances, strict=True)
        tasks = {asyncio.ensure_future(check): instance for check, instance in pairs}
        try:
            # The first instance to fail fails the batch at once; the others are not waited for.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise StepFailed(self._with_log(str(task.exception()), tasks[task]))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for instance in instances:
            self.store.set_instance_state(instance.id, "ready")

    def _with_log(self, message: str, instance: Instance) -> str:
        tail_of = getattr(self.platform, "tail", None)
        tail = str(tail_of(instance, lines=5)).strip() if tail_of is not None else ""
        return message + (f"\n  log: {tail}" if tail else "")

    def table_for(self, step: Route, generation: int) -> RoutingTable:
        pools = [
            Pool(
                revision=p.revision,
                version=self._revision(p.revision).version,
                weight=p.weight,
                backends=tuple(Backend(id=i.id, address=i.address)
                               for i in self._instances(p.revision, p.slots)),
            )
            for p in step.pools
        ]
        listed = {p.revision for p in pools}
        extra = [m.revision for m in step.match] + ([step.preview] if step.preview else [])
        for revision in dict.fromkeys(r for r in extra if r not in listed):
            running = sorted(self.fleet.get(revision, {}).items())
            pools.append(Pool(revision=revision, version=self._revision(revision).version, weight=0,
                              backends=tuple(Backend(id=i.id, address=i.address) for _, i in running)))
        rules = tuple(MatchRule(**m.model_dump()) for m in step.match)
        key = self.spec.routing.user_key
        return RoutingTable(
            generation=generation, pools=tuple(pools), rules=rules,
            user_key=UserKey(header=key.header, cookie=key.cookie), preview=step.preview,
            **self.table_settings(),
        )

    def table_settings(self) -> dict[str, Any]:
        """What every table carries from the spec besides pools: limits, timeouts, forwarding."""
        routing = self.spec.routing
        return {"limits": routing.limits, "timeouts": routing.timeouts,
                "buffer_requests": routing.buffer_requests, "trust_forwarded": routing.trust_forwarded}

    async def route(self, step: Route) -> None:
        """Apply the table `step` describes, built from the instances that really run."""
        current = await self.router.table()
        table = self.table_for(step, (current.generation if current else 0) + 1)
        try:
            await self.router.apply(table)
        except RouterError as exc:
            raise StepFailed(f"router: {exc}") from exc
        split = ", ".join(f"{p.version} {table.share(p.revision):.0f}%" for p in table.pools if p.weight)
        self.emit(Event("traffic", f"traffic: {split or 'none'}", data={"weights": table.weights()}))

    async def _run_tests(self, step: RunTests) -> None:
        preview = f"http://{self.spec.preview_listen()}"
        revision = self._revision(step.revision)
        for test in step.tests:
            await health.run_test(self.http, test, preview, revision=revision)
            self.emit(Event("info", f"test passed: {test.model_dump(exclude_defaults=True)}"))

    async def _drain(self, instances: list[Instance]) -> None:
        deadline = self.clock.now() + self.spec.routing.drain_timeout
        for instance in instances:
            self.store.set_instance_state(instance.id, "draining")
            while not await self.router.drained(instance.id):
                if self.clock.now() >= deadline:
                    self.emit(Event("warning", f"{instance.id} still busy after the drain timeout"))
                    return
                await self.clock.sleep(0.05)

    async def _stop(self, instances: list[Instance]) -> None:
        async def stop_one(instance: Instance) -> None:
            revision = self.store.revision(instance.revision)
            grace = revision.run.grace if revision else 10.0
            await self.platform.stop(instance, grace=grace)
            self.store.remove_instance(instance.id)
            self.fleet.get(instance.revision, {}).pop(instance.slot, None)

        await asyncio.gather(*(stop_one(i) for i in instances))

    # -- pauses and gates ---------------------------------------------------------

    async def _counters(self, watch: RevisionSubject | CohortSubject) -> Counters:
        """The counters of a revision, or of the users a flag is on (or off) for."""
        stats = await self.router.stats()
        if isinstance(watch, CohortSubject):
            return stats.cohorts.get(f"{watch.flag}:{'on' if watch.on else 'off'}", Counters())
        return stats.revisions.get(watch.revision, Counters())

    async def set_flag(self, step: SetFlag) -> None:
        """Write the flag's ramp to the flag store and put it in effect at the router."""
        if self.flags is None:
            raise StepFailed("no flag store is configured")
        existing = self.flags.flag(step.flag)
        segments = {str(s["name"]): int(s["id"]) for s in self.flags.segments()}
        definition = flag_definition(step, existing.definition if existing else None, segments)
        who = f"turnout deploy ({self.spec.service})"
        if existing is None:
            self.flags.create(definition, who=who)
        else:
            self.flags.update(step.flag, definition, who=who)
        evaluate = list(dict.fromkeys([*self.spec.routing.flags, step.flag]))
        state = self.flags.state()  # its meta.revision is read in the same transaction
        try:
            await self.router.set_flags(state, evaluate=evaluate,
                                        header=self.spec.routing.flags_header,
                                        revision=state["meta"]["revision"])
        except RouterError as exc:
            raise StepFailed(f"router: {exc}") from exc
        self.emit(Event("flag", describe(step),
                        data={"flag": step.flag, "enabled": step.enabled, "percent": step.percent}))

    def _thresholds(self) -> Thresholds:
        gate = self.spec.strategy.gate
        return Thresholds(gate.max_error_rate, gate.max_p99, gate.min_requests)

    async def _pause(self, deployment: DeploymentRecord, step: Pause) -> None:
        """Wait, judging `step.watch` with the gate; only a Successful verdict continues alone.

        Failed rolls back at once. A timed pause that ends on any other verdict (Inconclusive:
        too little traffic to tell) holds the deployment, still watched, until a human runs
        `turnout promote` or `turnout abort`.
        """
        if step.seconds is None:
            self.store.update_deployment(deployment.id, phase="paused", message="waiting for promote")
            self.emit(Event("paused", "paused: `turnout promote` continues, `turnout abort` goes back"))
        end = None if step.seconds is None else self.clock.now() + step.seconds
        baseline = await self._counters(step.watch) if step.watch else None
        verdict, promoted = await self._watch(deployment.id, end, step.watch, baseline)
        if not promoted and verdict is not None and verdict.verdict is not Verdict.SUCCESSFUL:
            kind = verdict.verdict.value
            message = f"{kind.lower()}: {verdict.reason}"
            self.store.update_deployment(deployment.id, phase="paused", message=message)
            self.emit(Event("paused", f"gate {kind} at the end of the pause ({verdict.reason}): "
                                      "`turnout promote` continues, `turnout abort` goes back"))
            await self._watch(deployment.id, None, step.watch, baseline)
        self.store.update_deployment(deployment.id, phase="progressing", message="")

    async def _watch(
        self, deployment_id: int, end: float | None, watch: RevisionSubject | CohortSubject | None,
        baseline: Counters | None,
    ) -> tuple[Judgement | None, bool]:
        """Wait until `end` (None: until promoted), judging `watch` since `baseline` at every
        gate interval; raise StepFailed on a Failed verdict. Returns (last verdict, promoted)."""
        interval = self.spec.strategy.gate.interval
        verdict: Judgement | None = None
        while end is None or self.clock.now() < end:
            slice_ = interval if end is None else min(interval, end - self.clock.now())
            if await self._wait(deployment_id, slice_, promote_ends=True):
                self.emit(Event("info", "promoted"))
                return verdict, True
            verdict = await self._judge(watch, baseline)
        if verdict is None:  # a pause too short for one interval is still judged once
            verdict = await self._judge(watch, baseline)
        return verdict, False

    async def _judge(self, watch: RevisionSubject | CohortSubject | None,
                     baseline: Counters | None) -> Judgement | None:
        """The gate's verdict on `watch` since `baseline` (None when nothing is watched)."""
        if watch is None or baseline is None:
            return None
        verdict = judge((await self._counters(watch)).minus(baseline), self._thresholds())
        self._report(verdict)
        if verdict.verdict is Verdict.FAILED:
            raise StepFailed(f"gate failed: {verdict.reason}")
        return verdict

    async def _analyse(self, deployment: DeploymentRecord, step: Analyse) -> None:
        limits = Thresholds(step.max_error_rate, step.max_p99, step.min_requests)
        baseline = await self._counters(step.subject)
        end = self.clock.now() + step.seconds
        verdict = judge(Counters(), limits)
        while self.clock.now() < end:
            await self._wait(deployment.id, min(self.spec.strategy.gate.interval, end - self.clock.now()),
                             promote_ends=False)
            verdict = judge((await self._counters(step.subject)).minus(baseline), limits)
            if verdict.verdict is Verdict.FAILED:
                break
        self._report(verdict)
        if verdict.verdict is Verdict.FAILED:
            raise StepFailed(f"analysis failed: {verdict.reason}")
        if verdict.verdict is Verdict.INCONCLUSIVE:
            message = f"inconclusive: {verdict.reason}"
            self.store.update_deployment(deployment.id, phase="paused", message=message)
            self.emit(Event("paused", f"analysis inconclusive ({verdict.reason}): promote or abort"))
            await self._wait(deployment.id, None, promote_ends=True)
            self.store.update_deployment(deployment.id, phase="progressing", message="")

    def _report(self, verdict: Judgement) -> None:
        self.emit(Event("gate", f"{verdict.verdict.value}: {verdict.reason}",
                        data={"requests": verdict.requests, "error_rate": verdict.error_rate,
                              "p99": verdict.p99}))

    # -- restore ------------------------------------------------------------------

    async def restore(self, deployment: DeploymentRecord) -> None:
        """Bring the previous revision back to all traffic and stop the target's instances."""
        await self.refresh()
        previous = deployment.previous_revision
        if previous is None:
            await self.router.apply(RoutingTable(generation=await self._next_generation(),
                                                 **self.table_settings()))
        else:
            slots = tuple(range(self.spec.instances))
            await self._start(previous, slots)
            await self._wait_healthy(previous, slots)
            await self.route(Route(pools=(RoutePool(revision=previous, weight=100, slots=slots),)))
            self.store.set_stable(self.spec.service, previous)
        # Everything of the target goes, and any slot of the previous one beyond the fleet size.
        leaving = [i for i in self.fleet.get(previous or "", {}).values() if i.slot >= self.spec.instances]
        if deployment.target_revision != previous:
            leaving += self.fleet.get(deployment.target_revision, {}).values()
        await self._drain(leaving)
        await self._stop(leaving)
        self.emit(Event("info", f"restored {previous or 'nothing (first release)'}"))

    async def _next_generation(self) -> int:
        current = await self.router.table()
        return (current.generation if current else 0) + 1
