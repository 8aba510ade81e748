"""What a feature toggle's ramp writes into the flag's definition."""

from __future__ import annotations

from turnout.engine.flagsteps import flag_definition
from turnout.flags import FlagState, evaluate
from turnout.plan import SetFlag


def test_raising_the_percentage_keeps_the_flags_own_stickiness_and_group() -> None:
    percentage = {"rollout": "10", "stickiness": "userId", "groupId": "launch"}
    existing = {"name": "f", "type": "release", "enabled": True,
                "strategies": [{"name": "flexibleRollout", "parameters": percentage}]}
    raised = flag_definition(SetFlag(flag="f", enabled=True, percent=40), existing, {})
    params = raised["strategies"][0]["parameters"]
    assert params == {"rollout": "40", "stickiness": "userId", "groupId": "launch"}
    before = FlagState.from_json({"version": 2, "features": [existing], "segments": []})
    after = FlagState.from_json({"version": 2, "features": [raised], "segments": []})
    users = [{"userId": f"u{i}"} for i in range(2000)]
    kept = [u for u in users if evaluate(before, "f", u).enabled]
    assert kept and all(evaluate(after, "f", u).enabled for u in kept)  # nobody who was in is out


def test_a_new_flag_sticks_on_the_default_and_its_own_name() -> None:
    written = flag_definition(SetFlag(flag="f", enabled=True, percent=25), None, {})
    expected = {"rollout": "25", "stickiness": "default", "groupId": "f"}
    assert written["strategies"][0]["parameters"] == expected
