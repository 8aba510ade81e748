"""The commands of a `Session`: deploy, promote, abort, rollback, status, history, events
and down, each holding the deployment lock where it changes anything.

What they share (opening, the lock, flags, the executor, running a plan, tidying, the
reaper) is `turnout.service.base`; whether a stored deployment may be carried on is
`turnout.service.resume`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from turnout import reaper, strategies, wiring
from turnout.engine.events import Event
from turnout.engine.health import probe
from turnout.errors import PlatformError, UserError
from turnout.model import Instance, Revision
from turnout.plan import Drain, Promote, Route, RoutePool, Step, Stop, describe, load_plan
from turnout.routers.base import RouterStats
from turnout.service.base import SessionBase
from turnout.service.resume import refuse_changed_plan, spec_to_carry_on
from turnout.specfile import with_kind
from turnout.status import (
    DeploymentStatus,
    InstanceStatus,
    Stable,
    Status,
    rollback_failed,
    router_status,
)
from turnout.store.db import DeploymentRecord, InstanceRecord
from turnout.store.records import Event as StoredEvent
from turnout.strategies import Fleet


class Session(SessionBase):
    """One service's commands, as the CLI and the demo call them."""

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
                refuse_changed_plan(active, spec)  # before anything acts
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

    async def _ensure_routed(self, revision: str, slots: tuple[int, ...]) -> None:
        table = await self.router.table()
        if table is None or {p.revision for p in table.pools if p.weight} != {revision}:
            assert self.executor is not None
            await self.executor.route(Route(pools=(RoutePool(revision=revision, weight=100, slots=slots),)))

    # -- promote, abort, rollback -------------------------------------------------

    def _active(self) -> DeploymentRecord:
        active = self.store.active_deployment(self.spec.service)
        if active is None:
            raise UserError(f"no deployment of {self.spec.service} is in progress")
        return active

    async def promote(self) -> DeploymentRecord:
        active = self._active()
        if not self.locked():  # it is carried on here: refuse a changed plan before asking
            self.spec = spec_to_carry_on(self.spec, active)
            refuse_changed_plan(active, self.spec)
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
        info = await self.router.describe()
        table = await self.router.table() if info.running else None
        stats = await self.router.stats() if table is not None else None
        latest = self.store.history(service, limit=1)
        return Status(
            service=service,
            listen=self.spec.listen,
            stable=Stable(revision=stable, version=revision.version if revision else None),
            deployment=self._deployment_status(),
            rollback_failed=rollback_failed(latest[0] if latest else None),
            router=router_status(table, stats, info.details),
            instances=sorted(await asyncio.gather(
                *(self._instance_status(r, stats) for r in self.store.instances(service))),
                key=lambda i: (i.host, i.id)),
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
        problem: str | None = "not running"
        try:
            alive = await self.platform.alive(inst)
        except PlatformError as exc:  # its host cannot be reached, say
            alive, problem = False, str(exc)
        if alive and revision:
            problem = await probe(self.http, inst, revision.health)
        return InstanceStatus(
            id=inst.id, version=inst.version, revision=inst.revision, host=inst.host, address=inst.address,
            pid=inst.pid, state=record.state, healthy=problem is None, problem=problem,
            in_flight=stats.in_flight.get(inst.id, 0) if stats else 0,
        )

    async def logs(self, *, lines: int, only: str | None = None) -> list[tuple[Instance, str]]:
        """The last `lines` lines of each instance's output (or of the one whose id starts
        with `only`), from wherever the platform keeps it (on hosts: their journal)."""
        found = [i for i in await self.platform.instances(self.spec.service)
                 if only is None or i.id.startswith(only)]
        if only is not None and not found:
            raise UserError(f"INSTANCE: no running instance of {self.spec.service} is {only!r}")
        tails = await asyncio.gather(*(self.platform.log_tail(i, lines=lines) for i in found))
        return list(zip(found, tails, strict=True))

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
            reaper.stop(self.state)
            await self.router.stop()  # first: hosts that cannot be listed do not keep it running
            records = self.store.instances(self.spec.service)
            found: dict[str, Instance] = {r.instance.id: r.instance for r in records}
            found.update({i.id: i for i in await self.platform.instances(self.spec.service)})
            for instance in found.values():
                await self.platform.stop(instance, grace=self.spec.run.grace)
                self.store.remove_instance(instance.id)
                stopped += 1
            self.store.set_stable(self.spec.service, None)
            return stopped


def _describe_raw(step: dict[str, Any]) -> str:
    return describe(load_plan([step])[0])
