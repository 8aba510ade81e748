"""The service layer: what the CLI (and later the API and dashboard) call.

`Session.open()` loads the spec and builds the store, and the platform and router it
names through `turnout.wiring` (this module holds them only as `Platform` and `Router`);
deploy, status, promote, abort, rollback, history and down are methods on it. A
per-service lock (an flock the kernel drops when its holder dies) keeps two deployments
apart, and a deployment whose holder died is found in the store and resumed or undone.
A command that leaves a fleet warm starts the reaper (`turnout.reaper`), which ends the
rollback window on time with `reap_warm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from turnout import reaper, strategies, wiring
from turnout.clock import Clock, SystemClock
from turnout.engine.events import Emit, Event, ignore
from turnout.engine.executor import Executor
from turnout.engine.health import probe
from turnout.errors import ConflictError, TurnoutError, UserError
from turnout.flags.store import FlagStore
from turnout.model import Instance, Revision
from turnout.plan import (
    Drain,
    Promote,
    Route,
    RoutePool,
    Step,
    Stop,
    describe,
    dump_plan,
    load_plan,
    plan_hash,
    stored_plan_hash,
)
from turnout.platforms.base import Platform
from turnout.routers.base import Router, RouterStats
from turnout.spec import STRATEGIES, Spec
from turnout.specfile import with_kind
from turnout.statedir import StateDir
from turnout.status import (
    DeploymentStatus,
    InstanceStatus,
    Stable,
    Status,
    rollback_failed,
    router_status,
)
from turnout.store.db import DeploymentRecord, InstanceRecord, Store
from turnout.store.records import Event as StoredEvent
from turnout.strategies import Fleet, started_from

LOCK_WAIT = 60.0  # how long a command waits for a short one (not a deployment) to release the lock


@dataclass
class Session:
    spec: Spec
    spec_dir: Path
    state: StateDir
    store: Store
    platform: Platform
    router: Router
    http: httpx.AsyncClient
    clock: Clock = field(default_factory=SystemClock)
    emit: Emit = ignore
    executor: Executor | None = None
    _flags: FlagStore | None = None
    spec_path: Path | None = None  # what the reaper reads again, with the same overrides
    overrides: tuple[str, ...] = ()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, spec_path: Path, overrides: tuple[str, ...] = (), *, emit: Emit = ignore
    ) -> AsyncIterator[Session]:
        spec = wiring.load_spec(spec_path, overrides)
        state = StateDir.for_spec(spec_path).create()
        spec_dir = state.spec_dir
        store = Store.open(state.database_url)
        platform = wiring.build_platform(spec, state)
        router = wiring.build_router(spec, state)
        async with httpx.AsyncClient(trust_env=False) as http:
            session = cls(spec, spec_dir, state, store, platform, router, http, emit=emit,
                          spec_path=spec_dir / spec_path.name, overrides=overrides)
            try:
                yield session
            finally:
                await router.aclose()
                await platform.aclose()
                if session._flags is not None:
                    session._flags.close()
                store.close()

    # -- locking ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, *, wait: float = LOCK_WAIT) -> AsyncIterator[None]:
        """Hold the service's deployment lock or raise ConflictError.

        A deployment in progress is refused at once. A holder without one is a short command
        (a status-like check, the reaper stopping a warm fleet): it is waited for up to `wait`.
        """
        fd = os.open(self.state.deploy_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            told = False
            while not _try_lock(fd):
                active = self.store.active_deployment(self.spec.service)
                if active is not None or time.monotonic() >= deadline:
                    what = f"deployment #{active.id} of {active.version}" if active else "another command"
                    raise ConflictError(
                        f"{what} is in progress for {self.spec.service}; "
                        "watch it with `turnout status`, or use `turnout promote` / `turnout abort`"
                    )
                if not told:
                    self.emit(Event("info", "waiting for another turnout command to finish"))
                    told = True
                await asyncio.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def locked(self) -> bool:
        """True while some process holds the deployment lock."""
        fd = os.open(self.state.deploy_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            return not _try_lock(fd)
        finally:
            os.close(fd)  # releases the lock if this call took it

    @property
    def flags(self) -> FlagStore:
        """The flag store, in the same database, opened on first use."""
        if self._flags is None:
            self._flags = FlagStore.open(self.state.database_url)
        return self._flags

    def uses_flags(self) -> bool:
        return bool(self.spec.routing.flags) or self.spec.strategy.kind == "feature-toggle"

    async def sync_flags(self) -> None:
        """Give the router the current flags and the names it evaluates for each request."""
        if not self.uses_flags():
            return
        evaluate = list(self.spec.routing.flags)
        if self.spec.strategy.kind == "feature-toggle" and self.spec.strategy.flag:
            evaluate = list(dict.fromkeys([*evaluate, self.spec.strategy.flag]))
        header = self.spec.routing.flags_header
        state = self.flags.state()  # its meta.revision is read in the same transaction
        await self.router.set_flags(state, evaluate=evaluate, header=header,
                                    revision=state["meta"]["revision"])

    def new_executor(self) -> Executor:
        self.executor = Executor(
            spec=self.spec, store=self.store, platform=self.platform, router=self.router,
            clock=self.clock, emit=self.emit, http=self.http,
            flags=self.flags if self.uses_flags() else None,
        )
        return self.executor

    def request_abort(self) -> None:
        if self.executor is not None:
            self.executor.request_abort()

    # -- deploy -------------------------------------------------------------------

    async def deploy(self, version: str, *, strategy: str | None = None) -> DeploymentRecord | None:
        """Deploy `version`; None when it already serves all traffic.

        `strategy` replaces the spec's kind for this deployment (the executor and the flag
        sync read the changed spec too). An interrupted deployment of the same revision is
        carried on, unless the spec no longer plans it step for step (UserError, exit 2).
        """
        if strategy is not None:
            self.spec = with_kind(self.spec, strategy, checks=(wiring.check,))
        spec = self.spec
        revision = Revision.of(spec, version)
        async with self.lock():
            active = self.store.active_deployment(spec.service)
            if active is not None and active.target_revision == revision.id:
                self._refuse_changed_plan(active, spec)  # before anything acts
            await self.router.ensure_running()
            await self.sync_flags()
            executor = self.new_executor()
            if active is not None:
                if active.target_revision == revision.id:
                    self.emit(Event("info", f"resuming deployment #{active.id} at step {active.step + 1}"))
                    return await self._resume(active)
                note = f"deployment #{active.id} of {active.version} was interrupted; undoing it"
                self.emit(Event("info", note))
                undone = await executor.go_back(active, "aborted", "replaced by a newer one")
                if undone.phase != "aborted":
                    return undone  # the previous version did not come back: stop here
            await self.tidy()
            self.store.save_revision(revision)
            await executor.refresh()
            stable = self.store.stable(spec.service)
            serving = tuple(sorted(executor.fleet.get(stable, {}))) if stable else ()
            if stable == revision.id and len(serving) == spec.instances:
                await self._ensure_routed(stable, serving)
                self.emit(Event("info", f"{version} already serves all traffic"))
                return None
            fleet = Fleet(target=revision.id, instances=spec.instances,
                          stable=stable if serving else None, stable_slots=serving)
            plan = strategies.plan(fleet, spec.strategy)
            return await self._run_new(revision, stable if serving else None, spec.strategy.kind, plan)

    async def _run_new(
        self, revision: Revision, previous: str | None, kind: str, plan: list[Step]
    ) -> DeploymentRecord:
        record = self.store.create_deployment(
            service=self.spec.service, version=revision.version, target_revision=revision.id,
            previous_revision=previous, strategy=kind, plan=dump_plan(plan),
            plan_hash=plan_hash(plan), owner_pid=os.getpid(),
        )
        self.emit(Event("info", f"deployment #{record.id}: {revision.version} with {kind}, {len(plan)} steps",
                        data={"deployment": record.id}))
        assert self.executor is not None
        done = await self.executor.run(record)
        self._reap_warm_later()
        return done

    def _refuse_changed_plan(self, record: DeploymentRecord, spec: Spec) -> None:
        """Refuse to carry `record` on (UserError: exit 2, nothing done) if its stored plan
        does not match its hash, or if `spec` no longer makes that plan from the fleet the
        deployment started from. A rollback's plan was not made by a strategy: only its hash
        is checked."""
        what = f"deployment #{record.id} of {record.version}"
        todo = (f"run `turnout abort` to go back to the previous version, or deploy {record.version} "
                f"with the spec it began with (strategy {record.strategy})")
        if stored_plan_hash(record.plan) != record.plan_hash:
            raise UserError(f"{what} cannot resume: its stored plan does not match its hash; {todo}")
        if record.strategy not in STRATEGIES:
            return
        if spec.strategy.kind != record.strategy:
            raise UserError(f"{what} cannot resume: it began with strategy {record.strategy} and "
                            f"the spec now says {spec.strategy.kind}; {todo}")
        try:
            steps = load_plan(record.plan)
        except ValueError as exc:  # a plan this version cannot read
            raise UserError(f"{what} cannot resume: its stored plan is unreadable ({exc}); {todo}") from None
        fleet = started_from(steps, target=record.target_revision, previous=record.previous_revision,
                             instances=spec.instances)
        again = strategies.plan(fleet, spec.strategy)
        if plan_hash(again) != record.plan_hash:
            raise UserError(f"{what} cannot resume: the spec changed since it began and now plans "
                            f"it otherwise ({len(steps)} steps stored, {len(again)} now); {todo}")

    def _spec_to_carry_on(self, record: DeploymentRecord) -> Spec:
        """The spec a deployment is carried on with when no command names a strategy: this
        one, with the deployment's kind (it may have begun with `--strategy`)."""
        if record.strategy not in STRATEGIES or record.strategy == self.spec.strategy.kind:
            return self.spec
        try:
            return with_kind(self.spec, record.strategy)
        except UserError as exc:
            raise UserError(f"deployment #{record.id} of {record.version} cannot resume: it began with "
                            f"strategy {record.strategy}, which the spec cannot plan now ({exc}); run "
                            "`turnout abort`, or deploy it again with the spec it began with") from None

    async def _resume(self, record: DeploymentRecord) -> DeploymentRecord:
        record = self.store.update_deployment(record.id, owner_pid=os.getpid(), phase="progressing")
        assert self.executor is not None
        done = await self.executor.run(record)
        self._reap_warm_later()
        return done

    async def _ensure_routed(self, revision: str, slots: tuple[int, ...]) -> None:
        table = await self.router.table()
        if table is None or {p.revision for p in table.pools if p.weight} != {revision}:
            assert self.executor is not None
            await self.executor.route(Route(pools=(RoutePool(revision=revision, weight=100, slots=slots),)))

    async def tidy(self) -> None:
        """Stop what nothing needs: warm fleets past their window and orphaned instances."""
        stable = self.store.stable(self.spec.service)
        now = self.clock.wall()
        table = await self.router.table() if (await self.router.describe()).running else None
        routed = table.backend_ids() if table else set()
        records = {r.instance.id: r for r in self.store.instances(self.spec.service)}

        async def stop(instance: Instance) -> None:
            self.emit(Event("info", f"stopping {instance.id}: no longer needed"))
            revision = self.store.revision(instance.revision)
            await self.platform.stop(instance, grace=revision.run.grace if revision else 5.0)
            self.store.remove_instance(instance.id)

        leaving = []
        for instance in await self.platform.instances(self.spec.service):
            record = records.get(instance.id)
            warm = record is not None and record.state == "warm" and (record.warm_until or 0) > now
            if not (instance.revision == stable or instance.id in routed or warm):
                leaving.append(instance)
        await asyncio.gather(*(stop(i) for i in leaving))  # at once: the lock is held meanwhile

    # -- the end of rollback windows ---------------------------------------------

    def _warm_until(self, *, after: float) -> float | None:
        """The earliest end of a rollback window later than `after`, if a fleet is warm."""
        ends = [r.warm_until for r in self.store.instances(self.spec.service)
                if r.state == "warm" and r.warm_until is not None and r.warm_until > after]
        return min(ends, default=None)

    def _reap_warm_later(self) -> None:
        """Holding the lock: if a fleet is warm, have a reaper end its window on time."""
        if self.spec_path is None:
            return
        if self._warm_until(after=float("-inf")) is None:
            reaper.stop(self.state)  # nothing left for it to do (say, a rollback flipped back)
            return
        try:
            pid = reaper.start(self.state, self.spec_path, self.overrides)
        except OSError as exc:
            self.emit(Event("warning", f"cannot start the reaper ({exc}): the next turnout command "
                                       "stops the warm fleet"))
            return
        self.emit(Event("info", f"the warm fleet is stopped when its window ends (reaper pid {pid})"))

    async def reap_warm(self, *, retry: float = 2.0, patience: float = 600.0) -> None:
        """Sleep until each rollback window ends, then tidy as the next command would.

        A deployment in progress (the lock held, or an interrupted one in the store) is
        waited for, retrying every `retry` seconds for at most `patience` seconds.
        """
        due = self._warm_until(after=float("-inf"))
        while due is not None:
            await self.clock.sleep(max(0.0, due - self.clock.wall()) + 0.1)
            if not await self._tidy_when_free(retry, patience):
                return
            due = self._warm_until(after=self.clock.wall())

    async def _tidy_when_free(self, retry: float, patience: float) -> bool:
        deadline = self.clock.now() + patience
        while True:
            try:
                async with self.lock(wait=0):
                    if self.store.active_deployment(self.spec.service) is None:
                        await self.tidy()
                        return True
                    problem = "a deployment is in progress"
            except ConflictError:
                problem = "another command holds the deployment lock"
            except TurnoutError as exc:
                problem = str(exc)
            if self.clock.now() >= deadline:
                self.emit(Event("warning", f"gave up waiting: {problem}; the next command tidies"))
                return False
            await self.clock.sleep(retry)

    # -- promote, abort, rollback -------------------------------------------------

    def _active(self) -> DeploymentRecord:
        active = self.store.active_deployment(self.spec.service)
        if active is None:
            raise UserError(f"no deployment of {self.spec.service} is in progress")
        return active

    async def promote(self) -> DeploymentRecord:
        active = self._active()
        if not self.locked():  # it is carried on here: refuse a changed plan before asking
            self.spec = self._spec_to_carry_on(active)
            self._refuse_changed_plan(active, self.spec)
        self.store.request(active.id, "promote")
        if self.locked():
            self.emit(Event("info", f"promote requested for deployment #{active.id}"))
            return active
        async with self.lock():  # the deploying CLI is gone: carry the deployment on here
            await self.router.ensure_running()
            self.new_executor()
            return await self._resume(active)

    async def abort(self) -> DeploymentRecord:
        active = self._active()
        self.store.request(active.id, "abort")
        if self.locked():
            self.emit(Event("info", f"abort requested for deployment #{active.id}; waiting for the rollback"))
            while True:
                record = self.store.deployment(active.id)
                if record is None or not record.active:
                    assert record is not None
                    return record
                await asyncio.sleep(0.2)
        async with self.lock():
            await self.router.ensure_running()
            executor = self.new_executor()
            return await executor.go_back(active, "aborted", "aborted by request")

    async def rollback(self, version: str | None = None) -> DeploymentRecord:
        """Return to `version` (default: the revision before the stable one)."""
        service = self.spec.service
        async with self.lock():
            if self.store.active_deployment(service) is not None:
                raise UserError("a deployment is in progress: use `turnout abort` to go back from it")
            stable = self.store.stable(service)
            target = self._rollback_target(stable, version)
            await self.router.ensure_running()
            executor = self.new_executor()
            await self.tidy()
            await executor.refresh()
            warm = tuple(sorted(executor.fleet.get(target.id, {})))
            current = tuple(sorted(executor.fleet.get(stable or "", {})))
            if len(warm) >= self.spec.instances and stable:
                plan: list[Step] = [
                    Route(pools=(RoutePool(revision=target.id, weight=100, slots=warm),)),
                    Promote(revision=target.id),
                    Drain(revision=stable, slots=current),
                    Stop(revision=stable, slots=current),
                ]
                kind = "flip"
            else:
                fleet = Fleet(target=target.id, instances=self.spec.instances,
                              stable=stable if current else None, stable_slots=current)
                plan = strategies.plan(fleet, self.spec.strategy)
                kind = self.spec.strategy.kind
            return await self._run_new(target, stable if current else None, f"rollback ({kind})", plan)

    def _rollback_target(self, stable: str | None, version: str | None) -> Revision:
        for record in self.store.history(self.spec.service, limit=100):
            candidate: str | None
            if version is None:
                ok = record.phase == "succeeded" and record.target_revision == stable
                candidate = record.previous_revision if ok else None
            else:
                candidate = record.target_revision if record.version == version else None
            if candidate and candidate != stable:
                revision = self.store.revision(candidate)
                if revision is not None:
                    return revision
        if version is None:
            raise UserError("there is no previous version to roll back to")
        raise UserError(f"version {version!r} was never deployed here")

    # -- status, history, down ----------------------------------------------------

    async def status(self) -> Status:
        """The stable revision, the deployment in progress (with its latest stored gate
        decision), the router's split and each instance's health (see `turnout.status`)."""
        service = self.spec.service
        stable = self.store.stable(service)
        revision = self.store.revision(stable) if stable else None
        table = await self.router.table() if (await self.router.describe()).running else None
        stats = await self.router.stats() if table is not None else None
        latest = self.store.history(service, limit=1)
        return Status(
            service=service,
            listen=self.spec.listen,
            stable=Stable(revision=stable, version=revision.version if revision else None),
            deployment=self._deployment_status(),
            rollback_failed=rollback_failed(latest[0] if latest else None),
            router=router_status(table, stats),
            instances=[await self._instance_status(r, stats) for r in self.store.instances(service)],
        )

    def _deployment_status(self) -> DeploymentStatus | None:
        active = self.store.active_deployment(self.spec.service)
        if active is None:
            return None
        plan = active.plan
        current = _describe_raw(plan[active.step]) if active.step < len(plan) else None
        return DeploymentStatus.of(active, interrupted=not self.locked(), current=current,
                                   gate=self.store.last_event(active.id, "gate"))

    async def _instance_status(self, record: InstanceRecord, stats: RouterStats | None) -> InstanceStatus:
        inst = record.instance
        revision = self.store.revision(inst.revision)
        alive = await self.platform.alive(inst)
        problem = await probe(self.http, inst, revision.health) if alive and revision else "not running"
        return InstanceStatus(
            id=inst.id, version=inst.version, revision=inst.revision, address=inst.address,
            pid=inst.pid, state=record.state, healthy=problem is None, problem=problem,
            in_flight=stats.in_flight.get(inst.id, 0) if stats else 0,
        )

    def history(self, limit: int = 20) -> list[DeploymentRecord]:
        return self.store.history(self.spec.service, limit=limit)

    def events(self, deployment_id: int) -> tuple[DeploymentRecord, list[StoredEvent]]:
        """One deployment of this service and every event stored with it, oldest first."""
        record = self.store.deployment(deployment_id)
        if record is None or record.service != self.spec.service:
            raise UserError(f"--events: no deployment #{deployment_id} of {self.spec.service} "
                            "(`turnout history` lists them)")
        return record, self.store.events(deployment_id)

    async def down(self) -> int:
        """Stop every instance and the router; forget the stable revision."""
        async with self.lock():
            active = self.store.active_deployment(self.spec.service)
            if active is not None:
                self.store.update_deployment(active.id, phase="aborted", message="service taken down")
            stopped = 0
            records = self.store.instances(self.spec.service)
            found: dict[str, Instance] = {r.instance.id: r.instance for r in records}
            found.update({i.id: i for i in await self.platform.instances(self.spec.service)})
            reaper.stop(self.state)
            await self.router.stop()
            for instance in found.values():
                await self.platform.stop(instance, grace=self.spec.run.grace)
                self.store.remove_instance(instance.id)
                stopped += 1
            self.store.set_stable(self.spec.service, None)
            return stopped


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _describe_raw(step: dict[str, Any]) -> str:
    return describe(load_plan([step])[0])
