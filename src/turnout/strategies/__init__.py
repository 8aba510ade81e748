"""Strategies: pure planners, one module each. `plan()` picks the module by kind."""

from __future__ import annotations

from collections.abc import Callable

from turnout.plan import Step
from turnout.spec import Strategy
from turnout.strategies import big_bang, blue_green, canary, feature_toggle, rolling
from turnout.strategies.base import Fleet, first_release

Planner = Callable[[Fleet, Strategy], list[Step]]

PLANNERS: dict[str, Planner] = {
    "big-bang": big_bang.plan,
    "rolling": rolling.plan,
    "blue-green": blue_green.plan,
    "canary": canary.plan,
}


def plan(fleet: Fleet, params: Strategy) -> list[Step]:
    """The steps that take `fleet` to its target revision with the strategy `params` name."""
    if params.kind == "feature-toggle":
        ship = plan(fleet, params.model_copy(update={"kind": params.ship}))
        return feature_toggle.plan(ship, params)
    if fleet.stable is None or fleet.stable == fleet.target:
        # Nothing serves yet, or the target lost instances: start what is missing, route all.
        return first_release(fleet)
    planner = PLANNERS.get(params.kind)
    if planner is None:
        raise ValueError(f"strategy {params.kind!r} is not available yet")
    return planner(fleet, params)


__all__ = ["PLANNERS", "Fleet", "first_release", "plan"]
