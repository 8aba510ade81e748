"""Strategies: pure planners, one module each, all in one registry keyed by the spec's kind.

`plan()` looks the kind up in `PLANNERS`. A planner that replaces the fleet is wrapped so
that a first release (nothing serves yet, or the target lost instances) gets the plan
every strategy shares; the feature toggle replaces nothing itself and composes the
planner of its `ship` kind through this same registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from turnout.plan import Step
from turnout.spec import BigBang, BlueGreen, Canary, FeatureToggle, Rolling, Strategy
from turnout.strategies import big_bang, blue_green, canary, feature_toggle, rolling
from turnout.strategies.base import Fleet, Planner, first_release, started_from

P = TypeVar("P", BigBang, Rolling, BlueGreen, Canary, FeatureToggle)


def _taking(model: type[P], planner: Callable[[Fleet, P], list[Step]], *, replaces: bool = True) -> Planner:
    """`planner` in the registry: it takes `model` only, and (`replaces`) not a first release."""

    def run(fleet: Fleet, params: Strategy) -> list[Step]:
        if not isinstance(params, model):
            raise TypeError(f"a {model.__name__} planner was given a {type(params).__name__} strategy")
        if replaces and (fleet.stable is None or fleet.stable == fleet.target):
            return first_release(fleet)
        return planner(fleet, params)

    return run


def _toggle(fleet: Fleet, params: FeatureToggle) -> list[Step]:
    return feature_toggle.plan(fleet, params, ship=plan)


PLANNERS: dict[str, Planner] = {
    "big-bang": _taking(BigBang, big_bang.plan),
    "rolling": _taking(Rolling, rolling.plan),
    "blue-green": _taking(BlueGreen, blue_green.plan),
    "canary": _taking(Canary, canary.plan),
    "feature-toggle": _taking(FeatureToggle, _toggle, replaces=False),
}


def plan(fleet: Fleet, params: Strategy) -> list[Step]:
    """The steps that take `fleet` to its target revision with the strategy `params` name."""
    return PLANNERS[params.kind](fleet, params)


__all__ = ["PLANNERS", "Fleet", "Planner", "first_release", "plan", "started_from"]
