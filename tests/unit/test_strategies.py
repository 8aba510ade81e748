"""Strategies as tables: spec parameters and a fleet in, steps out; plus plan invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.plan import (
    Analyse,
    CohortSubject,
    Drain,
    KeepWarm,
    Pause,
    Promote,
    RevisionSubject,
    Route,
    RunTests,
    Start,
    Step,
    Stop,
    WaitHealthy,
    describe,
    dump_plan,
    load_plan,
    plan_hash,
)
from turnout.spec import STRATEGIES, Strategy, parse_strategy
from turnout.strategies import PLANNERS, Fleet, plan, started_from

FLEET = Fleet(target="v2", instances=3, stable="v1", stable_slots=(0, 1, 2))


def S(**fields: object) -> Strategy:
    """A strategy as the spec file would give it: `S(kind="canary", steps=[...])`."""
    return parse_strategy(fields)


def lines(steps: list[Step]) -> list[str]:
    return [describe(s) for s in steps]


# One valid strategy of every kind, as a spec would give it.
EVERY_KIND: dict[str, dict[str, object]] = {
    "big-bang": {"kind": "big-bang"},
    "rolling": {"kind": "rolling", "max_surge": 1},
    "blue-green": {"kind": "blue-green", "tests": [{"command": ["true"]}]},
    "canary": {"kind": "canary", "steps": [{"weight": 10}, {"pause": None}]},
    "feature-toggle": {"kind": "feature-toggle", "flag": "f", "ship": "canary",
                       "steps": [{"weight": 50}], "ramp": [{"percent": 10}, {"pause": "5s"}]},
}


def test_every_kind_is_in_the_registry() -> None:
    assert set(PLANNERS) == set(STRATEGIES) == set(EVERY_KIND)
    for kind, fields in EVERY_KIND.items():
        steps = plan(FLEET, S(**fields))
        assert Promote(revision="v2") in steps, kind
        assert any(isinstance(s, Stop) and s.revision == "v1" for s in steps) \
            or any(isinstance(s, KeepWarm) and s.revision == "v1" for s in steps), kind


def test_a_planner_refuses_another_kinds_model() -> None:
    with pytest.raises(TypeError, match="a Canary planner was given a Rolling strategy"):
        PLANNERS["canary"](FLEET, S(kind="rolling"))


def test_first_release_is_the_same_for_every_strategy() -> None:
    first = Fleet(target="v1", instances=2)
    for kind in ("big-bang", "rolling", "blue-green", "canary"):
        assert lines(plan(first, S(**EVERY_KIND[kind]))) == [
            "start v1 slots [0, 1]",
            "wait until healthy: v1 slots [0, 1]",
            "route: v1 100 (2 inst)",
            "promote v1 to stable",
        ]


def test_big_bang_takes_everything_out_then_puts_everything_in() -> None:
    assert lines(plan(FLEET, S(kind="big-bang"))) == [
        "route: none",
        "drain v1 slots [0, 1, 2]",
        "stop v1 slots [0, 1, 2]",
        "start v2 slots [0, 1, 2]",
        "wait until healthy: v2 slots [0, 1, 2]",
        "route: v2 100 (3 inst)",
        "promote v2 to stable",
    ]


def test_rolling_one_at_a_time_with_surge() -> None:
    assert lines(plan(FLEET, S(kind="rolling", max_surge=1, max_unavailable=0)))[:5] == [
        "start v2 slots [0]",
        "wait until healthy: v2 slots [0]",
        "route: v2 1 (1 inst), v1 2 (2 inst)",
        "drain v1 slots [0]",
        "stop v1 slots [0]",
    ]


def test_rolling_without_surge_retires_first() -> None:
    steps = lines(plan(FLEET, S(kind="rolling", max_surge=0, max_unavailable=1)))
    assert steps[:3] == ["route: v1 2 (2 inst)", "drain v1 slots [0]", "stop v1 slots [0]"]


def test_rolling_full_surge_is_one_batch() -> None:
    steps = lines(plan(FLEET, S(kind="rolling", max_surge="100%")))
    assert steps == [
        "start v2 slots [0, 1, 2]",
        "wait until healthy: v2 slots [0, 1, 2]",
        "route: v2 3 (3 inst)",
        "drain v1 slots [0, 1, 2]",
        "stop v1 slots [0, 1, 2]",
        "promote v2 to stable",
    ]


def test_rolling_refuses_zero_zero() -> None:
    with pytest.raises(ValueError, match="cannot both be 0"):
        S(kind="rolling", max_surge=0, max_unavailable=0)


@given(
    n=st.integers(1, 8),
    surge=st.integers(0, 4),
    unavailable=st.integers(0, 4),
    old=st.integers(1, 8),
)
def test_rolling_invariants(n: int, surge: int, unavailable: int, old: int) -> None:
    """Never below n - max_unavailable routed, never above n + max_surge running, ends all-new."""
    if surge == 0 and unavailable == 0:
        return
    fleet = Fleet(target="new", instances=n, stable="old", stable_slots=tuple(range(old)))
    running = {("old", s) for s in range(old)}
    routed_min = min(n, old)
    healthy: set[tuple[str, int]] = set()
    last_route: Route | None = None
    for step in plan(fleet, S(kind="rolling", max_surge=surge, max_unavailable=unavailable)):
        if isinstance(step, Start):
            running |= {(step.revision, s) for s in step.slots}
            assert len(running) <= max(n, old) + surge
        elif isinstance(step, WaitHealthy):
            healthy |= {(step.revision, s) for s in step.slots}
        elif isinstance(step, Route):
            routed = [(p.revision, s) for p in step.pools for s in p.slots]
            assert len(routed) >= routed_min - unavailable
            for revision, slot in routed:
                assert revision == "old" or (revision, slot) in healthy, "routed before healthy"
            last_route = step
        elif isinstance(step, Stop):
            assert last_route is not None
            still = {(p.revision, s) for p in last_route.pools for s in p.slots}
            assert not ({(step.revision, s) for s in step.slots} & still), "stopped while routed"
            running -= {(step.revision, s) for s in step.slots}
    assert running == {("new", s) for s in range(n)}
    assert last_route is not None and [p.revision for p in last_route.pools] == ["new"]


def test_blue_green_tests_green_on_preview_then_switches_once() -> None:
    params = S(kind="blue-green", tests=[{"http": "/smoke"}], rollback_window="5m")
    steps = plan(FLEET, params)
    assert [type(s) for s in steps] == [Start, WaitHealthy, Route, RunTests, Route, Promote, KeepWarm]
    preview = steps[2]
    assert isinstance(preview, Route) and preview.preview == "v2"
    assert [p.revision for p in preview.pools] == ["v1"]
    switch = steps[4]
    assert isinstance(switch, Route) and [p.revision for p in switch.pools] == ["v2"]
    warm = steps[6]
    assert isinstance(warm, KeepWarm) and warm.seconds == 300 and warm.slots == (0, 1, 2)


def test_blue_green_without_auto_promote_pauses_for_a_human() -> None:
    steps = plan(FLEET, S(kind="blue-green", auto_promote=False))
    assert Pause(seconds=None) in steps


def test_canary_grows_its_fleet_with_its_weight_and_keeps_new_first() -> None:
    params = S(kind="canary", steps=[{"weight": 10}, {"pause": "30s"}, {"weight": 50}, {"pause": None},
                                            {"analysis": {"duration": "1m"}}])
    steps = plan(FLEET, params)
    routes = [s for s in steps if isinstance(s, Route)]
    assert [[(p.revision, p.weight, len(p.slots)) for p in r.pools] for r in routes] == [
        [("v2", 10, 1), ("v1", 90, 3)],
        [("v2", 50, 2), ("v1", 50, 3)],
        [("v2", 100, 3)],
    ]
    pauses = [s for s in steps if isinstance(s, Pause)]
    assert [p.seconds for p in pauses] == [30.0, None]
    assert {(p.watch, p.baseline) for p in pauses} == {
        (RevisionSubject(revision="v2"), RevisionSubject(revision="v1"))}
    analyse = next(s for s in steps if isinstance(s, Analyse))
    assert analyse.subject == RevisionSubject(revision="v2")
    assert analyse.baseline == RevisionSubject(revision="v1")
    assert isinstance(steps[-1], Stop) and isinstance(steps[-2], Drain)


def test_canary_match_rules_reach_the_canary_before_any_weight() -> None:
    params = S(kind="canary", steps=[{"weight": 20}], match=[{"users": ["alice", "bob"]}])
    steps = plan(FLEET, params)
    first_route = next(s for s in steps if isinstance(s, Route))
    assert first_route.pools[0].weight == 0 and first_route.match[0].users == ("alice", "bob")


def test_plans_round_trip_through_json() -> None:
    for fields in EVERY_KIND.values():
        steps = plan(FLEET, S(**fields))
        assert load_plan(dump_plan(steps)) == steps
        assert plan_hash(load_plan(dump_plan(steps))) == plan_hash(steps)


def test_feature_toggle_ships_dark_then_ramps_the_flag() -> None:
    params = S(kind="feature-toggle", flag="new-checkout", ship="blue-green",
                      ramp=[{"users": ["alice"]}, {"pause": "10s"}, {"segment": "beta"},
                            {"percent": 25}, {"pause": None}])
    steps = plan(FLEET, params)
    assert describe(steps[0]) == "flag new-checkout: off"
    ship = plan(FLEET, S(kind="blue-green"))
    assert steps[1 : 1 + len(ship)] == ship  # the shipping strategy, unchanged, with the flag off
    assert lines(steps[1 + len(ship) :]) == [
        "flag new-checkout: on for 1 user(s)",
        "pause 10s",
        "flag new-checkout: on for 1 user(s), segment beta",
        "flag new-checkout: on for 1 user(s), segment beta, 25% of users",
        "pause until `turnout promote`",
        "flag new-checkout: on for 1 user(s), segment beta, 100% of users",
    ]
    pauses = [s for s in steps if isinstance(s, Pause)]
    assert {(p.watch, p.baseline) for p in pauses} == {
        (CohortSubject(flag="new-checkout"), CohortSubject(flag="new-checkout", on=False))}


def test_feature_toggle_first_release_still_ramps() -> None:
    params = S(kind="feature-toggle", flag="f", ramp=[{"percent": 100}])
    steps = lines(plan(Fleet(target="v1", instances=1), params))
    assert steps[0] == "flag f: off" and steps[-1] == "flag f: on for 100% of users"
    assert "promote v1 to stable" in steps


def test_a_toggle_ships_through_the_registry_with_its_ships_fields() -> None:
    fields = EVERY_KIND["feature-toggle"]
    steps = plan(FLEET, S(**fields))
    ship = plan(FLEET, S(kind="canary", steps=[{"weight": 50}]))
    assert steps[1 : 1 + len(ship)] == ship
    pauses = [s for s in steps if isinstance(s, Pause)]
    assert [p.watch for p in pauses] == [CohortSubject(flag="f")]  # the ramp's; the ship has none


@given(
    kind=st.sampled_from(sorted(EVERY_KIND)),
    instances=st.integers(min_value=1, max_value=6),
    serving=st.sets(st.integers(min_value=0, max_value=7), min_size=1, max_size=6),
    first=st.booleans(),
)
def test_a_plan_tells_the_fleet_it_was_made_from(kind: str, instances: int, serving: set[int],
                                                  first: bool) -> None:
    """What a resumed deployment re-plans from: the plan names the stable slots it replaces."""
    fleet = Fleet(target="v2", instances=instances, stable=None if first else "v1",
                  stable_slots=() if first else tuple(sorted(serving)))
    steps = plan(fleet, S(**EVERY_KIND[kind]))
    again = started_from(steps, target="v2", previous=fleet.stable, instances=instances)
    assert again == fleet
    assert plan_hash(plan(again, S(**EVERY_KIND[kind]))) == plan_hash(steps)
