"""Feature toggle: ship the code dark, then switch the flag on for more and more users.

The shipping strategy (`ship`, planned by the registry's planner of that kind, passed in
so this module needs no registry) puts the new revision out with the flag off; the ramp
then widens the flag step by step (named users, segments, a sticky percentage), each
pause watching the flag's cohort at the router with the same gate as a canary. The
last step switches the flag on for everyone. Going back switches the flag off, which
the router applies to the very next request.
"""

from __future__ import annotations

from turnout.plan import CohortSubject, Pause, SetFlag, Step
from turnout.spec import FeatureToggle
from turnout.strategies.base import Fleet, Planner, analyse


def plan(fleet: Fleet, params: FeatureToggle, *, ship: Planner) -> list[Step]:
    flag = params.flag
    steps: list[Step] = [SetFlag(flag=flag, enabled=False), *ship(fleet, params.shipping)]
    users: list[str] = []
    segments: list[str] = []
    percent = 0
    cohort, baseline = CohortSubject(flag=flag), CohortSubject(flag=flag, on=False)

    def widen() -> SetFlag:
        return SetFlag(flag=flag, enabled=True, users=tuple(users), segments=tuple(segments),
                       percent=percent)

    for item in params.ramp:
        if item.users is not None:
            users += [u for u in item.users if u not in users]
            steps.append(widen())
        elif item.segment is not None:
            segments += [item.segment] if item.segment not in segments else []
            steps.append(widen())
        elif item.percent is not None:
            percent = max(percent, item.percent)
            steps.append(widen())
        elif item.pause is not None:
            seconds = None if item.pause == "forever" else float(item.pause)
            steps.append(Pause(seconds=seconds, watch=cohort, baseline=baseline))
        elif item.analysis is not None:
            steps.append(analyse(cohort, baseline, item.analysis, params.gate))
    if percent < 100:
        percent = 100
        steps.append(widen())
    return steps
