"""Rolling: replace instances in batches, never below `instances - max_unavailable` serving.

Old slots are taken in batches of `max_surge + max_unavailable`. When the surge covers
the batch, new instances start first and the old leave after; otherwise the part the
surge cannot cover leaves first (the allowed unavailability), then the rest follows
the DESIGN order: start, wait healthy, route, drain, stop.
"""

from __future__ import annotations

from turnout.plan import Drain, Promote, Route, RoutePool, Start, Step, Stop, WaitHealthy
from turnout.spec import Rolling
from turnout.strategies.base import Fleet


def plan(fleet: Fleet, params: Rolling) -> list[Step]:
    assert fleet.stable is not None
    n = fleet.instances
    surge = params.max_surge.resolve(n, round_up=True)
    unavailable = params.max_unavailable.resolve(n, round_up=False)
    if surge + unavailable == 0:
        surge = 1  # a percentage that rounds to 0/0 still has to move
    batch = surge + unavailable

    old = list(fleet.stable_slots)
    new: list[int] = []
    todo = list(fleet.new_slots)
    steps: list[Step] = []

    def route() -> Route:
        pools = [RoutePool(revision=fleet.target, weight=len(new), slots=tuple(new))] if new else []
        if old:
            pools.append(RoutePool(revision=fleet.stable or "", weight=len(old), slots=tuple(old)))
        return Route(pools=tuple(pools))

    def retire(slots: list[int]) -> None:
        for slot in slots:
            old.remove(slot)
        steps.extend([route(), Drain(revision=fleet.stable or "", slots=tuple(slots)),
                      Stop(revision=fleet.stable or "", slots=tuple(slots))])

    while todo or old:
        starting, todo = todo[:batch], todo[batch:]
        # The last round retires every old slot left, whatever the fleet sizes.
        leaving = old[: len(starting)] if todo else list(old)
        early = leaving[: max(0, len(starting) - surge)]
        if early:
            retire(early)
        if starting:
            steps += [Start(revision=fleet.target, slots=tuple(starting)),
                      WaitHealthy(revision=fleet.target, slots=tuple(starting))]
            new.extend(starting)
        retire(leaving[len(early) :])
    steps.append(Promote(revision=fleet.target))
    return _squash(steps)


def _squash(steps: list[Step]) -> list[Step]:
    """Drop empty drains and stops and a route repeated with nothing in between."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Drain | Stop) and not step.slots:
            continue
        if isinstance(step, Route) and out and out[-1] == step:
            continue
        out.append(step)
    return out
