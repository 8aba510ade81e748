"""The executor: runs a plan step by step, stores progress after each, rolls back by itself.

This module is the run loop and one dispatch over the step types of `turnout.plan`; the work
lives beside it: `fleet` (the instances that really run, tables, routing), `gates` (pauses
and analyses judged on live traffic), `rollback` (going back), `flagsteps` (flag changes),
`control` (abort and promote requests, and waits that give way to them), `webhooks` (HTTP
calls at the deployment's turning points: gates before it starts, before each Route and the
Promote step, after a rollback, and every event). Every step is safe to run twice, because
the fleet is re-read from the world before the plan runs: a plan interrupted by a SIGKILL
resumes at the stored step. A failed step, a failed gate, `turnout abort` or Ctrl-C all end
in `Rollback.go_back`; a deployment lock lost to another control plane (`halt`) ends the run
where it stands, as a SIGKILL would, for the new holder to carry on. Every event is shown and
stored with the deployment (`Recorder`).

The executor does not know which metric source or judge decides a gate: the session passes
them in (`turnout.wiring.analysis` chooses them).
"""

from __future__ import annotations

import asyncio

import httpx

from turnout.analysis.judge import Judge
from turnout.analysis.sources import MetricSource
from turnout.clock import Clock
from turnout.engine import health
from turnout.engine.control import Aborted, Control, Halted, StepFailed
from turnout.engine.events import Emit, Event, Recorder
from turnout.engine.flagsteps import FlagWriter
from turnout.engine.fleet import RunningFleet
from turnout.engine.gates import Gates
from turnout.engine.rollback import Rollback
from turnout.engine.webhooks import Webhooks
from turnout.errors import ConflictError, PlatformError, TurnoutError
from turnout.flags.store import FlagStore
from turnout.model import Instance
from turnout.plan import (
    Analyse,
    CohortSubject,
    Drain,
    KeepWarm,
    Pause,
    Promote,
    RevisionSubject,
    Route,
    RunTests,
    SetFlag,
    Start,
    Step,
    Stop,
    Subject,
    WaitHealthy,
    describe,
    load_plan,
)
from turnout.platforms.base import Platform
from turnout.routers.base import Router
from turnout.spec import FeatureToggle, Spec
from turnout.store.db import DeploymentRecord, Store

__all__ = ["Aborted", "Executor", "StepFailed"]


class Executor:
    def __init__(
        self, *, spec: Spec, store: Store, platform: Platform, router: Router, clock: Clock,
        emit: Emit, http: httpx.AsyncClient, source: MetricSource, judge: Judge,
        flags: FlagStore | None = None,
    ) -> None:
        self.spec, self.store, self.clock = spec, store, clock
        self.record = Recorder(store, emit)
        self.world = RunningFleet(spec=spec, store=store, platform=platform, router=router, http=http,
                                  clock=clock, record=self.record)
        self.flag_writer = FlagWriter(spec=spec, flags=flags, router=router, record=self.record)
        self.gates = Gates(spec=spec, source=source, judge=judge, clock=clock, record=self.record)
        self.rollback = Rollback(spec=spec, store=store, fleet=self.world, flags=self.flag_writer,
                                 record=self.record)
        self.webhooks = Webhooks(hooks=spec.strategy.webhooks, http=http, clock=clock, store=store,
                                 record=self.record)
        self._interrupted = asyncio.Event()
        self._halted: str | None = None

    def request_abort(self) -> None:
        """Called from a signal handler: roll back at the next safe point."""
        self._interrupted.set()

    def halt(self, reason: str) -> None:
        """The deployment lock passed to another control plane: stop at the next safe point
        and change nothing more (no rollback); `run` raises ConflictError(`reason`)."""
        self._halted = reason

    @property
    def fleet(self) -> dict[str, dict[int, Instance]]:
        """The instances that run, by revision and slot (as of the last `refresh`)."""
        return self.world.running

    async def refresh(self) -> None:
        """Reconcile the store with what runs (see `RunningFleet.refresh`); outside a
        deployment, hosts lost beyond what the spec allows are a PlatformError."""
        try:
            await self.world.refresh()
        except StepFailed as exc:
            raise PlatformError(str(exc)) from exc

    async def route(self, step: Route) -> None:
        await self.world.route(step)

    async def serving(self) -> str:
        return await self.world.serving()

    async def restore(self, deployment: DeploymentRecord) -> None:
        await self.rollback.restore(deployment)

    async def go_back(self, deployment: DeploymentRecord, phase: str, reason: str) -> DeploymentRecord:
        self.record.deployment_id = deployment.id
        self.webhooks.begin(deployment, load_plan(deployment.plan))
        try:
            return await self._back(deployment, phase, reason)
        finally:
            await self.webhooks.end()
            self.record.deployment_id = None

    async def _back(self, deployment: DeploymentRecord, phase: str, reason: str) -> DeploymentRecord:
        done = await self.rollback.go_back(deployment, phase, reason)
        await self.webhooks.rolled_back(done)
        return done

    # -- running a deployment -----------------------------------------------------

    async def run(self, deployment: DeploymentRecord) -> DeploymentRecord:
        """Run the plan from its stored step to the end; on failure or abort, go back."""
        plan = load_plan(deployment.plan)
        control = Control(self.store, self.clock, deployment.id, self._interrupted,
                          halted=lambda: self._halted)
        self.record.deployment_id = deployment.id
        self.webhooks.begin(deployment, plan)
        try:
            try:
                await self.world.refresh()  # a host lost meanwhile fails the deployment here
                if (refused := await self.webhooks.pre_rollout(control, deployment)) is not None:
                    return self._refused(deployment, refused)
                # A first release has nothing to go back to or compare with: not watched.
                background = self.spec.strategy.analysis if deployment.previous_revision else None
                async with self.gates.throughout(control, background,
                                                 *self._watched(deployment)) as watching:
                    for index in range(deployment.step, len(plan)):
                        step = plan[index]
                        control.check()
                        self.record(Event("step", describe(step), step=index + 1, total=len(plan)))
                        await self._run_step(control, deployment, step)
                        self.store.update_deployment(deployment.id, step=index + 1, phase="progressing")
                    await self.gates.settle(control, deployment.id, watching)
                    control.check()  # a background analysis that failed during the last step
                    await self.world.whole(deployment.target_revision, "at the end of the deployment")
            except Halted as exc:
                raise ConflictError(str(exc)) from None
            except Aborted as exc:
                return await self._back(deployment, "aborted", str(exc) or "aborted")
            except (StepFailed, health.CheckFailed, TurnoutError) as exc:
                return await self._back(deployment, "failed", str(exc))
            done = self.record.phase(deployment.id, "succeeded")
            self.record(Event("succeeded", f"{deployment.version} serves all traffic"))
            return done
        finally:
            await self.webhooks.end()
            self.record.deployment_id = None

    def _refused(self, deployment: DeploymentRecord, reason: str) -> DeploymentRecord:
        """A pre-rollout webhook refused: the deployment fails before anything changed."""
        self.record(Event("failed", f"{reason}; nothing was changed"))
        return self.record.phase(deployment.id, "failed", reason)

    def _watched(self, deployment: DeploymentRecord) -> tuple[Subject, Subject | None]:
        """What a background analysis compares: a feature toggle's cohorts, else the new
        revision with the one it replaces."""
        strategy = self.spec.strategy
        if isinstance(strategy, FeatureToggle):
            return CohortSubject(flag=strategy.flag), CohortSubject(flag=strategy.flag, on=False)
        previous = deployment.previous_revision
        return (RevisionSubject(revision=deployment.target_revision),
                RevisionSubject(revision=previous) if previous else None)

    def _judges_preview(self) -> bool:
        """Whether the plan judges a preview (blue-green's `preview_analysis`)."""
        return getattr(self.spec.strategy, "preview_analysis", None) is not None

    @staticmethod
    def _live(step: Route) -> Subject | None:
        """The revision with the most live traffic in a table (a preview's baseline)."""
        pools = sorted((p for p in step.pools if p.revision != step.preview), key=lambda p: -p.weight)
        return RevisionSubject(revision=pools[0].revision) if pools else None

    async def _run_step(self, control: Control, deployment: DeploymentRecord, step: Step) -> None:
        world = self.world
        match step:
            case Start():
                await control.guard(world.start(step.revision, step.slots))
            case WaitHealthy():
                await control.guard(world.wait_healthy(step.revision, step.slots))
            case Route():
                await self.webhooks.confirm(control, "confirm-rollout")
                await world.route(step, target=deployment.target_revision)  # what runs, read again
                if step.preview is not None and self._judges_preview():
                    await self.gates.preview_opened(RevisionSubject(revision=step.preview),
                                                    self._live(step))
            case RunTests():
                await control.guard(world.run_tests(step))
            case Pause():
                await self.gates.pause(control, deployment.id, step)
            case Analyse():
                await self.gates.analyse(control, deployment.id, step)
            case Drain():
                await world.drain(world.present(step.revision, step.slots), control)
            case Stop():
                await world.stop(world.present(step.revision, step.slots))
            case Promote():
                await self.webhooks.confirm(control, "confirm-promotion")
                await world.whole(step.revision, "before the promotion")  # read again
                self.store.set_stable(self.spec.service, step.revision)
                for instance in world.running.get(step.revision, {}).values():
                    self.store.set_instance_state(instance.id, "ready")  # a warm fleet flipped back
            case SetFlag():
                await self.flag_writer.set(step)
            case KeepWarm():
                until = self.clock.wall() + step.seconds
                for instance in world.present(step.revision, step.slots):
                    self.store.set_instance_state(instance.id, "warm", warm_until=until)
