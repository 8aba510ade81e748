"""Going back: a failed step, a failed gate, `turnout abort` or Ctrl-C end here.

A feature toggle's flags go dark first (the router applies that to the very next request)
and, when the toggle's code already serves, the code stays, dark, provided it still
serves: a new code path may have crashed the processes or wedged them (see `keep_dark`).
Anything else brings the previous revision back to all traffic: when its instances are
still warm that is a single table flip, else they are started again first; then the
target's instances are drained and stopped. When even that fails the deployment ends
`rollback-failed`, and the message says what serves now (exit 1 for the CLI).
"""

from __future__ import annotations

from turnout.engine import health
from turnout.engine.control import StepFailed
from turnout.engine.events import Event, Recorder
from turnout.engine.flagsteps import FlagWriter
from turnout.engine.fleet import RunningFleet
from turnout.errors import TurnoutError
from turnout.plan import Route, RoutePool, SetFlag, load_plan
from turnout.spec import Spec
from turnout.store.db import DeploymentRecord, Store


class Rollback:
    def __init__(
        self, *, spec: Spec, store: Store, fleet: RunningFleet, flags: FlagWriter, record: Recorder
    ) -> None:
        self.spec, self.store, self.fleet, self.flags, self.record = spec, store, fleet, flags, record

    async def go_back(self, deployment: DeploymentRecord, phase: str, reason: str) -> DeploymentRecord:
        """End `deployment` in `phase` ("aborted" or "failed") with the previous version serving,
        or in "rollback-failed" saying what serves when that cannot be done."""
        try:
            flags = {s.flag for s in load_plan(deployment.plan) if isinstance(s, SetFlag)}
            for flag in sorted(flags):  # first of all, the new code path goes dark
                await self.flags.set(SetFlag(flag=flag, enabled=False))
                self.record(Event("rollback", f"{phase}: {reason}; flag {flag} switched off"))
            if flags and self.store.stable(self.spec.service) == deployment.target_revision:
                await self.keep_dark(deployment)
                return self.record.phase(deployment.id, phase, reason)
            self.record(Event("rollback", f"{phase}: {reason}; restoring the previous version"))
            await self.restore(deployment)
        except (StepFailed, health.CheckFailed, TurnoutError) as exc:
            serving = await self.fleet.serving()
            reason = f"{reason}; restoring the previous version failed too: {exc}; {serving}"
            phase = "rollback-failed"
            self.record(Event("failed", f"restoring the previous version failed: {exc}; {serving}"))
        return self.record.phase(deployment.id, phase, reason)

    async def keep_dark(self, deployment: DeploymentRecord) -> None:
        """After a toggle's flag went off: the shipped code stays only if it serves.

        What runs is read again (one listing) and every instance of the target probed once
        by its health check (all at once, each bounded by `health.timeout`). Instances gone
        or failing the probe are started again in place (same slots, same revision): the
        flag is off now, so the code path that crashed them gets no more requests, and the
        old path is what the ship already checked with the flag off; that touches only the
        broken slots, the others serve throughout, and the toggle keeps its promise (the
        code stays, dark). Instances of the same revision that cannot be started or do not
        become healthy show that the shipped code fails with the flag off too: then the
        previous revision is restored as for any other strategy (`restore`). A process that
        dies again later, long after the rollback, is not watched for here.
        """
        fleet, target = self.fleet, deployment.target_revision
        fleet.lenient = True  # what can be kept is, on the hosts that are left
        await fleet.refresh()
        slots = tuple(range(self.spec.instances))
        gone = [fleet.gone[(target, s)].id if (target, s) in fleet.gone else f"slot {s}"
                for s in fleet.missing(target, slots)]
        sick = await fleet.sick(fleet.present(target, slots))
        if not gone and not sick:
            self.record(Event("info", f"the shipped code stays, dark: {target} runs and answers"))
            return
        broken = [f"{name} is gone" for name in gone] + [f"{i} failed its health check ({why})"
                                                         for i, why in sick.items()]
        self.record(Event("rollback", f"the shipped code does not serve: {'; '.join(broken)}; "
                          "starting it again in place, with the flag off"))
        try:
            await self._restart(target, slots, set(sick))
        except (StepFailed, health.CheckFailed, TurnoutError) as exc:
            self.record(Event("rollback", f"starting {target} again failed: {exc}; restoring the "
                              "previous version"))
            await self.restore(deployment)
            return
        self.record(Event("info", f"{target} serves again, dark, after starting {len(broken)} "
                          "instance(s) again"))

    async def _restart(self, target: str, slots: tuple[int, ...], sick: set[str]) -> None:
        """Replace the gone instances of `target` and those in `sick` (ids) in their slots."""
        fleet = self.fleet
        if sick:  # out of the table first, then stopped: nothing routed is ever stopped
            wedged = [i for i in fleet.present(target, slots) if i.id in sick]
            well = tuple(i.slot for i in fleet.present(target, slots) if i.id not in sick)
            if well:
                await fleet.route(Route(pools=(RoutePool(revision=target, weight=100, slots=well),)))
            else:
                await fleet.route_nowhere()
            await fleet.stop(wedged)
        await fleet.start(target, slots)
        await fleet.wait_healthy(target, slots)
        await fleet.route(Route(pools=(RoutePool(revision=target, weight=100, slots=slots),)))

    async def restore(self, deployment: DeploymentRecord) -> None:
        """Bring the previous revision back to all traffic and stop the target's instances."""
        fleet = self.fleet
        fleet.lenient = True  # what can be restored is, on the hosts that are left
        await fleet.refresh()
        previous = deployment.previous_revision
        if previous is None:
            await fleet.route_nowhere()
        else:
            slots = tuple(range(self.spec.instances))
            await fleet.start(previous, slots)
            if not fleet.running.get(previous):
                raise StepFailed(f"no instance of {previous} could be started")
            await fleet.wait_healthy(previous, slots)
            await fleet.route(Route(pools=(RoutePool(revision=previous, weight=100, slots=slots),)))
            self.store.set_stable(self.spec.service, previous)
        # Everything of the target goes, and any slot of the previous one beyond the fleet size.
        leaving = [i for i in fleet.running.get(previous or "", {}).values() if i.slot >= self.spec.instances]
        if deployment.target_revision != previous:
            leaving += fleet.running.get(deployment.target_revision, {}).values()
        await fleet.drain(leaving)
        await fleet.stop(leaving)
        lost = f" without lost host(s) {', '.join(sorted(fleet.lost))}" if fleet.lost else ""
        self.record(Event("info", f"restored {previous or 'nothing (first release)'}{lost}"))
