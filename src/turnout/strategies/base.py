"""What every strategy plans from, and the plan shared by all of them for a first release."""

from __future__ import annotations

from dataclasses import dataclass

from turnout.plan import Promote, Route, RoutePool, Start, Step, WaitHealthy


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
