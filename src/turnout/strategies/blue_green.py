"""Blue-green: a full green fleet, tested on the preview address, then one atomic switch.

With `preview_analysis`, green is judged before the switch on its preview traffic (the
tests' and any other), against blue's live traffic when the analysis compares.

Blue leaves traffic in the same table that gives green all of it, and stays running for
`rollback_window`, so switching back is a table flip rather than a new rollout.
"""

from __future__ import annotations

from turnout.plan import (
    KeepWarm,
    Pause,
    Promote,
    RevisionSubject,
    Route,
    RoutePool,
    RunTests,
    Start,
    Step,
    WaitHealthy,
)
from turnout.spec import BlueGreen, Gate
from turnout.strategies.base import Fleet, analyse, only


def plan(fleet: Fleet, params: BlueGreen) -> list[Step]:
    assert fleet.stable is not None
    blue, green = fleet.stable_slots, fleet.new_slots
    steps: list[Step] = [
        Start(revision=fleet.target, slots=green),
        WaitHealthy(revision=fleet.target, slots=green),
        Route(pools=(RoutePool(revision=fleet.stable, weight=100, slots=blue),), preview=fleet.target),
    ]
    if params.tests:
        steps.append(RunTests(revision=fleet.target, tests=tuple(params.tests)))
    if params.preview_analysis is not None:
        check = analyse(RevisionSubject(revision=fleet.target), RevisionSubject(revision=fleet.stable),
                        params.preview_analysis, Gate())
        steps.append(check.model_copy(update={"since_preview": True}))
    if not params.auto_promote:
        steps.append(Pause(seconds=None))
    steps += [
        only(fleet.target, green),
        Promote(revision=fleet.target),
        KeepWarm(revision=fleet.stable, slots=blue, seconds=params.rollback_window),
    ]
    return steps
