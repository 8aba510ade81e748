"""What every strategy plans from, and the plan shared by all of them for a first release."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from turnout.plan import (
    Analyse,
    Drain,
    KeepWarm,
    Promote,
    Route,
    RoutePool,
    Start,
    Step,
    Stop,
    Subject,
    WaitHealthy,
)
from turnout.spec import Analysis, Gate, Strategy


@dataclass(frozen=True)
class Fleet:
    """The world a plan starts from: the stable revision, its serving slots, the target."""

    target: str
    instances: int
    stable: str | None = None
    stable_slots: tuple[int, ...] = ()

    @property
    def new_slots(self) -> tuple[int, ...]:
        return tuple(range(self.instances))


def started_from(plan: list[Step], *, target: str, previous: str | None, instances: int) -> Fleet:
    """The fleet a plan was made from: the stable revision it replaces (`previous`) and the
    slots of it the plan names (in tables, drains, stops and warm fleets), so that the plan
    of a deployment can be made again and compared when it resumes."""
    slots: set[int] = set()
    for step in plan:
        if isinstance(step, Route):
            slots.update(s for pool in step.pools if pool.revision == previous for s in pool.slots)
        elif isinstance(step, Drain | Stop | KeepWarm) and step.revision == previous:
            slots.update(step.slots)
    return Fleet(target=target, instances=instances, stable=previous, stable_slots=tuple(sorted(slots)))


def analyse(subject: Subject, baseline: Subject | None, step: Analysis, gate: Gate) -> Analyse:
    """An analysis step: its own limits, the strategy's gate for those it leaves out."""
    own = step.model_dump(exclude_none=True, exclude={"duration"})
    limits = {name: own.get(name, getattr(gate, name)) for name in (
        "max_error_rate", "max_p99", "min_requests", "max_error_rate_increase", "max_p99_increase",
        "min_soak")}
    return Analyse(subject=subject, baseline=baseline, seconds=step.duration, alpha=gate.alpha, **limits)

Planner = Callable[[Fleet, Strategy], list[Step]]
"""What the registry holds for each kind: (fleet, the spec's strategy) -> steps."""


def first_release(fleet: Fleet) -> list[Step]:
    """Nothing serves yet: start everything, wait, route, done. No strategy changes that."""
    slots = fleet.new_slots
    return [
        Start(revision=fleet.target, slots=slots),
        WaitHealthy(revision=fleet.target, slots=slots),
        Route(pools=(RoutePool(revision=fleet.target, weight=100, slots=slots),)),
        Promote(revision=fleet.target),
    ]


def only(revision: str, slots: tuple[int, ...]) -> Route:
    """A table where `revision` takes all traffic."""
    return Route(pools=(RoutePool(revision=revision, weight=100, slots=slots),))
