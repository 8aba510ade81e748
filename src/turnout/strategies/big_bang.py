"""Big bang: everything old out, everything new in. Downtime is the accepted price.

If the new revision fails its health checks the executor's rollback restarts the old
one, so a failed big bang ends with the previous version serving again.
"""

from __future__ import annotations

from turnout.plan import Drain, Promote, Route, Start, Step, Stop, WaitHealthy
from turnout.spec import BigBang
from turnout.strategies.base import Fleet, only


def plan(fleet: Fleet, params: BigBang) -> list[Step]:
    assert fleet.stable is not None
    old, new = fleet.stable_slots, fleet.new_slots
    return [
        Route(pools=()),
        Drain(revision=fleet.stable, slots=old),
        Stop(revision=fleet.stable, slots=old),
        Start(revision=fleet.target, slots=new),
        WaitHealthy(revision=fleet.target, slots=new),
        only(fleet.target, new),
        Promote(revision=fleet.target),
    ]
