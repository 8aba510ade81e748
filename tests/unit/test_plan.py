"""The plan vocabulary: typed subjects, and plans stored by older versions still load."""

from __future__ import annotations

from turnout.plan import (
    Analyse,
    CohortSubject,
    Pause,
    RevisionSubject,
    describe,
    dump_plan,
    load_plan,
)


def test_subjects_are_hashable_and_round_trip_by_kind() -> None:
    subjects: list[RevisionSubject | CohortSubject] = [
        RevisionSubject(revision="v2-abc"), CohortSubject(flag="new-checkout"),
        CohortSubject(flag="new-checkout", on=False)]
    assert len(set(subjects)) == 3
    steps = [Pause(seconds=5, watch=s, baseline=s) for s in subjects]
    dumped = dump_plan(list(steps))
    assert [d["watch"] for d in dumped] == [
        {"kind": "revision", "revision": "v2-abc"},
        {"kind": "cohort", "flag": "new-checkout", "on": True},
        {"kind": "cohort", "flag": "new-checkout", "on": False},
    ]
    assert load_plan(dumped) == steps


def test_a_plan_stored_with_string_watches_still_loads() -> None:
    stored: list[dict[str, object]] = [
        {"kind": "pause", "seconds": 30.0, "watch": "v2-abc"},
        {"kind": "pause", "seconds": None, "watch": "flag:new:checkout:on"},
        {"kind": "pause", "seconds": None, "watch": None},
        {"kind": "analyse", "revision": "v2-abc", "seconds": 60.0, "max_error_rate": 0.01,
         "max_p99": 0.5, "min_requests": 20},
        {"kind": "analyse", "revision": "flag:f:on", "seconds": 60.0, "max_error_rate": 0.01,
         "max_p99": 0.5, "min_requests": 20},
    ]
    steps = load_plan(stored)
    assert steps[0] == Pause(seconds=30.0, watch=RevisionSubject(revision="v2-abc"))
    assert steps[1] == Pause(seconds=None, watch=CohortSubject(flag="new:checkout"))
    assert steps[2] == Pause(seconds=None)
    assert isinstance(steps[3], Analyse) and steps[3].subject == RevisionSubject(revision="v2-abc")
    assert isinstance(steps[4], Analyse) and steps[4].subject == CohortSubject(flag="f")
    assert steps[4].baseline is None
    assert describe(steps[4]) == "analyse users with flag f on for 60s"
