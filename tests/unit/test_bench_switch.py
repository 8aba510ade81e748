"""The pure parts of `bench/switch.py`: the moment from which every request reached the new
revision, the switch read from a deployment's stored events, and the summary's goal."""

from __future__ import annotations

from typing import Any

import pytest
from bench import switch

from turnout.demo.load import Sample


def _sample(sent: float, version: str | None, status: int | None = 200) -> Sample:
    return Sample(sent, sent + 0.002, status, version, "u0", None if status else "refused")


def _event(at: float, kind: str, **data: Any) -> dict[str, Any]:
    return {"at": at, "kind": kind, "message": "", "data": data}


def test_all_new_is_the_first_send_after_the_last_that_did_not_reach_the_new_revision() -> None:
    samples = [_sample(1.0, "v1"), _sample(1.005, "v2"), _sample(1.010, "v1"), _sample(1.015, "v2"),
               _sample(1.020, "v2")]
    assert switch.all_new_from(samples, "v2") == 1.015
    failed = [*samples, _sample(1.025, None, None), _sample(1.030, "v2")]  # a failure is not the new one
    assert switch.all_new_from(failed, "v2") == 1.030
    assert switch.all_new_from(samples[:3], "v2") is None  # the old one answered last
    assert switch.all_new_from([_sample(2.0, "v2")], "v2") == 2.0


def test_the_switch_is_the_step_before_the_first_traffic_to_the_revision_alone() -> None:
    events = [_event(10.0, "step"), _event(10.1, "traffic", weights={"v1-a": 100}),  # the preview route
              _event(11.0, "step"), _event(11.2, "info"),
              _event(11.3, "traffic", weights={"v2-b": 100, "v1-a": 0}), _event(11.4, "step")]
    assert switch.switch_events(events, "v2-b") == (11.0, 11.3)
    with pytest.raises(RuntimeError, match="v3-c"):
        switch.switch_events(events, "v3-c")


def test_the_goal_is_met_only_when_every_run_is_within_it() -> None:
    def record(told: float | None) -> dict[str, Any]:
        return {"router": "builtin", "action": "rollback", "from_told_s": told, "from_command_s": 0.7,
                "apply_s": 0.01, "command_s": 0.8, "failed": 0, "resent": 0, "strategy": "rollback (flip)"}

    row = switch.summarise([record(0.01), record(0.05), record(0.02)], "builtin", "rollback")
    assert row["goal_met"] and row["from_told_s"] == {"median": 0.02, "min": 0.01, "max": 0.05}
    assert not switch.summarise([record(0.01), record(0.15)], "builtin", "rollback")["goal_met"]
    assert not switch.summarise([record(0.01), record(None)], "builtin", "rollback")["goal_met"]
