"""Delta events: order, recompilation of dependents, immutability, bad events."""

from __future__ import annotations

from typing import Any

from turnout.flags import FlagState, is_enabled


def in_segment(flag: str, segment: int) -> dict[str, Any]:
    return {"name": flag, "enabled": True,
            "strategies": [{"name": "default", "segments": [segment]}]}


def segment(ident: int, *apps: str) -> dict[str, Any]:
    return {"id": ident, "constraints": [{"contextName": "appName", "operator": "IN",
                                          "values": list(apps)}]}


def test_segment_update_recompiles_flags_that_use_it_and_leaves_old_state_alone() -> None:
    old = FlagState.from_json({"version": 1, "features": [in_segment("f", 1)],
                               "segments": [segment(1, "shop")]})
    new = old.apply([{"eventId": 2, "type": "segment-updated",
                      "segment": segment(1, "admin")}])
    assert is_enabled(old, "f", {"appName": "shop"})
    assert not is_enabled(new, "f", {"appName": "shop"})
    assert is_enabled(new, "f", {"appName": "admin"})


def test_events_apply_in_order_and_untouched_flags_are_shared() -> None:
    base = FlagState.from_json({"version": 1, "features": [
        {"name": "keep", "enabled": True}, {"name": "drop", "enabled": True}]})
    new = base.apply([
        {"type": "feature-updated", "feature": {"name": "drop", "enabled": False}},
        {"type": "feature-updated", "feature": {"name": "added", "enabled": True}},
        {"type": "feature-removed", "featureName": "drop", "project": "default"},
    ])
    assert sorted(new.features) == ["added", "keep"]
    assert new.features["keep"] is base.features["keep"]
    assert "drop" in base


def test_segment_removed_turns_dependent_flags_off() -> None:
    state = FlagState.from_json({"events": [
        {"type": "hydration", "features": [in_segment("f", 3)], "segments": [segment(3, "a")]},
        {"type": "segment-removed", "segmentId": 3},
    ]})
    assert not is_enabled(state, "f", {"appName": "a"})


def test_hydration_replaces_everything() -> None:
    state = FlagState.from_json({"version": 1, "features": [{"name": "old", "enabled": True}]})
    state = state.apply([{"type": "hydration", "features": [{"name": "new", "enabled": True}]}])
    assert list(state.features) == ["new"]


def test_bad_events_are_skipped_and_listed() -> None:
    state = FlagState.from_json({"version": 1, "features": []}).apply([
        {"type": "feature-exploded"}, "junk", {"type": "feature-updated", "feature": {}},
        {"type": "feature-updated", "feature": {"name": "ok", "enabled": True}},
    ])
    assert list(state.features) == ["ok"]
    assert len(state.problems) == 3
    assert FlagState.from_json([1, 2]).problems
    assert FlagState.from_json({"events": "nope"}).problems


def test_to_json_round_trips() -> None:
    doc = {"version": 2, "features": [in_segment("f", 1)], "segments": [segment(1, "x")]}
    again = FlagState.from_json(FlagState.from_json(doc).to_json())
    assert is_enabled(again, "f", {"appName": "x"}) and again.version == 2
