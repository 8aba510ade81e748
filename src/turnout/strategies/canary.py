"""Canary: a small share of traffic first, judged on the router's counters, then more.

The canary fleet grows with its weight (`ceil(instances * weight / 100)`, at least one)
while the stable fleet stays whole until the end, so shrinking the canary back is only a
table change. Pauses watch the canary with the gate; `analysis` steps judge it over a
window. Match rules send chosen users to the canary at every step. The new revision's
pool comes first in every table, so sticky users only move from old to new.
"""

from __future__ import annotations

import math

from turnout.plan import (
    Drain,
    MatchTo,
    Pause,
    Promote,
    RevisionSubject,
    Route,
    RoutePool,
    Start,
    Step,
    Stop,
    WaitHealthy,
)
from turnout.spec import Canary
from turnout.strategies.base import Fleet, analyse, only


def plan(fleet: Fleet, params: Canary) -> list[Step]:
    assert fleet.stable is not None
    n, stable = fleet.instances, fleet.stable
    match = tuple(
        MatchTo(revision=fleet.target, header=m.header, cookie=m.cookie,
                values=tuple(m.values), users=tuple(m.users))
        for m in params.match
    )
    running = 0
    steps: list[Step] = []

    def grow(count: int) -> None:
        nonlocal running
        if count > running:
            slots = tuple(range(running, count))
            steps.extend([Start(revision=fleet.target, slots=slots),
                          WaitHealthy(revision=fleet.target, slots=slots)])
            running = count

    def route(weight: int) -> Route:
        return Route(
            pools=(RoutePool(revision=fleet.target, weight=weight, slots=tuple(range(running))),
                   RoutePool(revision=stable, weight=100 - weight, slots=fleet.stable_slots)),
            match=match,
        )

    canary, baseline = RevisionSubject(revision=fleet.target), RevisionSubject(revision=stable)
    grow(1)
    if match:
        steps.append(route(0))
    for item in params.steps:
        if item.weight is not None:
            grow(max(1, math.ceil(n * item.weight / 100)))
            steps.append(route(item.weight))
        elif item.pause is not None:
            seconds = None if item.pause == "forever" else float(item.pause)
            steps.append(Pause(seconds=seconds, watch=canary, baseline=baseline))
        elif item.analysis is not None:
            steps.append(analyse(canary, baseline, item.analysis, params.gate))
    grow(n)
    steps += [
        only(fleet.target, fleet.new_slots),
        Promote(revision=fleet.target),
        Drain(revision=stable, slots=fleet.stable_slots),
        Stop(revision=stable, slots=fleet.stable_slots),
    ]
    return steps
