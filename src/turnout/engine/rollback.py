"""Going back: a failed step, a failed gate, `turnout abort` or Ctrl-C end here.

A feature toggle's flags go dark first (the router applies that to the very next request)
and, when the toggle's code already serves, that is the whole of it: the code stays, dark.
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
                return self.record.phase(deployment.id, phase, reason)
            self.record(Event("rollback", f"{phase}: {reason}; restoring the previous version"))
            await self.restore(deployment)
        except (StepFailed, health.CheckFailed, TurnoutError) as exc:
            serving = await self.fleet.serving()
            reason = f"{reason}; restoring the previous version failed too: {exc}; {serving}"
            phase = "rollback-failed"
            self.record(Event("failed", f"restoring the previous version failed: {exc}; {serving}"))
        return self.record.phase(deployment.id, phase, reason)

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
