"""The exposure check of the feature-toggle e2e test, run against histories we write by hand.

The e2e test passes when every answer on the new code path is explained by a flag state
in effect while it was in flight; these tests show the check fails when the router
would have switched the flag on too early, and that it does not fail on honest runs.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.flag_exposure import FlagHistory, unexplained

from turnout.demo.load import Sample

FLAG = "new-checkout"
USERS = [f"u{i}" for i in range(100)]


def definition(*, users: tuple[str, ...] = (), percent: int = 0, enabled: bool = True) -> dict[str, Any]:
    strategies: list[dict[str, Any]] = []
    if users:
        strategies.append({"name": "userWithId", "parameters": {"userIds": ",".join(users)}})
    strategies.append({"name": "flexibleRollout",
                       "parameters": {"rollout": str(percent), "stickiness": "default", "groupId": FLAG}})
    return {"name": FLAG, "type": "release", "enabled": enabled, "strategies": strategies}


# Created off at 100, u1 and u2 at 101, 30% more at 102, everyone at 103.
RAMP = FlagHistory.from_definitions(FLAG, [
    (100.0, definition(enabled=False)),
    (101.0, definition(users=("u1", "u2"))),
    (102.0, definition(users=("u1", "u2"), percent=30)),
    (103.0, definition(users=("u1", "u2"), percent=100)),
])
IN_30 = [u for u in USERS if RAMP.on_for(3, u)]
OUT_OF_30 = [u for u in USERS if not RAMP.on_for(3, u)]


def new_path(user: str, sent: float, done: float | None = None) -> Sample:
    done = sent + 0.01 if done is None else done
    return Sample(sent=sent, done=done, status=200, version=f"v2+{FLAG}", user=user, error=None)


def check(samples: list[Sample], history: FlagHistory = RAMP, lag: float = 0.0) -> list[Sample]:
    return unexplained(samples, history, wall=lambda t: t, lag=lag)


def test_the_ramp_states_are_what_the_definitions_say() -> None:
    assert [RAMP.on_for(0, u) for u in ("u1", "u50")] == [False, False]  # before the flag existed
    assert not any(RAMP.on_for(1, u) for u in USERS)
    assert [u for u in USERS if RAMP.on_for(2, u)] == ["u1", "u2"]
    assert 15 <= len(IN_30) <= 45 and {"u1", "u2"} <= set(IN_30)
    assert all(RAMP.on_for(4, u) for u in USERS)
    assert RAMP.first_on_for_all(USERS, after=0.0) == 103.0
    assert RAMP.first_on_for_all(USERS, after=103.0) is None


def test_an_honest_ramp_is_explained() -> None:
    samples = [
        new_path("u1", 101.2),
        new_path(IN_30[-1], 102.5),
        *(new_path(u, 103.2) for u in USERS),
        new_path("u2", 100.99, done=101.02),  # in flight while the state naming u2 was written
    ]
    assert check(samples) == []


def test_the_flag_on_for_everyone_too_early_is_caught() -> None:
    """As if the router had skipped the ramp and put the flag on for all at 101."""
    samples = [new_path(u, 101.5) for u in USERS]
    caught = check(samples)
    assert {s.user for s in caught} == set(USERS) - {"u1", "u2"}


def test_a_user_outside_the_percentage_before_the_last_step_is_caught() -> None:
    outsider = OUT_OF_30[0]
    assert check([new_path(outsider, 102.5)]) == [new_path(outsider, 102.5)]
    assert check([new_path(outsider, 102.99, done=103.01)]) == []  # the 100% state came in flight


def test_a_state_written_after_the_answer_explains_nothing() -> None:
    early = new_path("u1", 100.5, done=100.99)
    assert check([early]) == [early]


def test_a_state_superseded_before_the_send_explains_nothing_without_lag() -> None:
    """Switched off at 104: an answer sent after that on the new path is unexplained,
    unless the check allows the router to trail the store by `lag`."""
    off = FlagHistory.from_definitions(FLAG, [
        (100.0, definition(users=("u1",))),
        (104.0, definition(users=("u1",), enabled=False)),
    ])
    late = new_path("u1", 104.2)
    assert check([late], off) == [late]
    assert check([late], off, lag=0.5) == []
    assert check([new_path("u1", 105.0)], off, lag=0.5) == [new_path("u1", 105.0)]


def test_an_archived_flag_is_off() -> None:
    history = FlagHistory.from_definitions(FLAG, [(100.0, definition(percent=100)), (101.0, None)])
    assert check([new_path("u5", 100.5)], history) == []
    assert len(check([new_path("u5", 101.5)], history)) == 1
