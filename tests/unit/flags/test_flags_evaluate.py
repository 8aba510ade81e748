"""Reasons, error codes and edge cases of flag evaluation beyond the Unleash spec."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from turnout.flags import ErrorCode, FlagState, Reason, evaluate, is_enabled, variant
from turnout.flags.hashing import normalized_hash


def state_of(*features: dict[str, Any], segments: list[dict[str, Any]] | None = None,
             hostname: str = "web-1") -> FlagState:
    doc = {"version": 2, "features": list(features), "segments": segments or []}
    return FlagState.from_json(doc, hostname=hostname)


def flag(name: str, *strategies: dict[str, Any], enabled: bool = True,
         **extra: Any) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": list(strategies), **extra}


def rollout(percent: int, stickiness: str = "default", **extra: Any) -> dict[str, Any]:
    params = {"rollout": str(percent), "stickiness": stickiness, "groupId": "g"}
    return {"name": "flexibleRollout", "parameters": params, **extra}


def test_unknown_flag_is_default_with_flag_not_found() -> None:
    result = evaluate(state_of(), "nope", {"userId": "1"})
    assert (result.enabled, result.reason, result.error_code) == (
        False, Reason.DEFAULT, ErrorCode.FLAG_NOT_FOUND)
    chosen = variant(state_of(), "nope", {})
    assert (chosen.name, chosen.feature_enabled, chosen.error_code) == (
        "disabled", False, ErrorCode.FLAG_NOT_FOUND)


def test_reasons_for_static_disabled_targeting_split_and_no_match() -> None:
    state = state_of(
        flag("no-strategies"),
        flag("off", {"name": "default"}, enabled=False),
        flag("users", {"name": "userWithId", "parameters": {"userIds": "a, b"}}),
        flag("half", rollout(50)),
        flag("everyone", rollout(100)),
    )
    assert evaluate(state, "no-strategies").reason is Reason.STATIC
    assert evaluate(state, "everyone").reason is Reason.STATIC
    assert evaluate(state, "off").reason is Reason.DISABLED
    assert evaluate(state, "users", {"userId": "b"}).reason is Reason.TARGETING_MATCH
    missed = evaluate(state, "users", {"userId": "c"})
    assert (missed.enabled, missed.reason, missed.error_code) == (False, Reason.DEFAULT, None)
    inside = next(u for u in map(str, range(100)) if normalized_hash("g", u) <= 50)
    hit = evaluate(state, "half", {"userId": inside})
    assert (hit.enabled, hit.reason, hit.strategy) == (True, Reason.SPLIT, 0)


def test_malformed_constraint_turns_the_flag_off_with_parse_error() -> None:
    bad = {"contextName": "userId", "operator": "NUM_GT", "value": "not-a-number"}
    state = state_of(flag("f", {"name": "default", "constraints": [bad]}))
    result = evaluate(state, "f", {"userId": "5"})
    assert (result.enabled, result.reason, result.error_code) == (
        False, Reason.ERROR, ErrorCode.PARSE_ERROR)
    assert result.error_message is not None and "NUM_GT" in result.error_message
    assert variant(state, "f", {}).reason is Reason.ERROR


def test_a_healthy_strategy_still_wins_over_a_malformed_one() -> None:
    bad = {"contextName": "x", "operator": "REGEX", "value": "(unclosed"}
    state = state_of(flag("f", {"name": "default", "constraints": [bad]},
                          {"name": "userWithId", "parameters": {"userIds": "7"}}))
    assert evaluate(state, "f", {"userId": "7"}).reason is Reason.TARGETING_MATCH
    assert evaluate(state, "f", {"userId": "8"}).error_code is ErrorCode.PARSE_ERROR


def test_unknown_strategy_and_missing_segment_are_reported() -> None:
    state = state_of(flag("custom", {"name": "myOwnStrategy"}),
                     flag("seg", {"name": "default", "segments": [9]}))
    for name, text in (("custom", "unknown strategy"), ("seg", "segment 9 not found")):
        result = evaluate(state, name, {})
        assert result.reason is Reason.ERROR and text in (result.error_message or "")


def test_flag_with_junk_definition_is_an_error_not_an_exception() -> None:
    state = state_of({"name": "f", "enabled": "yes"}, {"name": "g", "enabled": True,
                                                       "strategies": "all"})
    for name in ("f", "g"):
        assert evaluate(state, name, {}).error_code is ErrorCode.PARSE_ERROR


def test_invalid_context_is_reported() -> None:
    state = state_of(flag("f"))
    result = evaluate(state, "f", ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert (result.enabled, result.error_code) == (False, ErrorCode.INVALID_CONTEXT)


def test_flexible_rollout_splits_users_near_the_percentage_and_sticks() -> None:
    state = state_of(flag("f", rollout(30)))
    users = [{"userId": f"user-{i}"} for i in range(4000)]
    first = [is_enabled(state, "f", u) for u in users]
    assert 0.27 < sum(first) / len(users) < 0.33
    assert first == [is_enabled(state, "f", u) for u in users]


def test_custom_stickiness_without_the_field_is_off_even_at_100() -> None:
    state = state_of(flag("f", rollout(100, stickiness="tenant")))
    assert not is_enabled(state, "f", {"userId": "1"})
    assert is_enabled(state, "f", {"properties": {"tenant": "acme"}})


def test_remote_address_strategy_accepts_cidr_blocks() -> None:
    strategy = {"name": "remoteAddress", "parameters": {"IPs": "10.1.0.0/16, bad, ::1"}}
    state = state_of(flag("f", strategy))
    assert is_enabled(state, "f", {"remoteAddress": "10.1.200.3"})
    assert is_enabled(state, "f", {"remoteAddress": "::1"})
    assert not is_enabled(state, "f", {"remoteAddress": "10.2.0.1"})


def test_application_hostname_compares_without_case() -> None:
    strategy = {"name": "applicationHostname", "parameters": {"hostNames": "WEB-1,web-2"}}
    assert is_enabled(state_of(flag("f", strategy), hostname="web-1"), "f")
    assert not is_enabled(state_of(flag("f", strategy), hostname="db-1"), "f")


def test_date_constraint_uses_injected_now_when_context_has_no_time() -> None:
    after = {"contextName": "currentTime", "operator": "DATE_AFTER",
             "value": "2030-01-01T00:00:00Z"}
    state = state_of(flag("f", {"name": "default", "constraints": [after]}))
    assert not is_enabled(state, "f", {}, now=datetime(2029, 12, 31, tzinfo=UTC))
    assert is_enabled(state, "f", {}, now=datetime(2030, 1, 2, tzinfo=UTC))
    assert is_enabled(state, "f", {"currentTime": "2031-05-05T10:00:00+02:00"})


def test_variant_overrides_win_and_report_targeting_match() -> None:
    variants = [
        {"name": "a", "weight": 500, "overrides": [{"contextName": "userId",
                                                    "values": ["vip"]}]},
        {"name": "b", "weight": 500, "payload": {"type": "json", "value": "{}"}},
    ]
    state = state_of(flag("f", variants=variants))
    chosen = variant(state, "f", {"userId": "vip"})
    assert (chosen.name, chosen.reason) == ("a", Reason.TARGETING_MATCH)
    names = {variant(state, "f", {"userId": str(i)}).name for i in range(200)}
    assert names == {"a", "b"}
    split = variant(state, "f", {"userId": "x"})
    assert split.reason is Reason.SPLIT and split.enabled and split.feature_enabled


def test_weight_types_are_normalised_like_the_unleash_server() -> None:
    variants = [{"name": "fixed", "weight": 900, "weightType": "fix"},
                {"name": "v1", "weight": 0, "weightType": "variable"},
                {"name": "v2", "weight": 0, "weightType": "variable"}]
    state = state_of(flag("f", variants=variants))
    counts = {"fixed": 0, "v1": 0, "v2": 0}
    for i in range(3000):
        counts[variant(state, "f", {"userId": f"u{i}"}).name] += 1
    assert 0.86 < counts["fixed"] / 3000 < 0.94
    assert counts["v1"] > 100 and counts["v2"] > 100


def test_enabled_flag_without_variants_gives_disabled_variant_with_default_reason() -> None:
    chosen = variant(state_of(flag("f")), "f", {})
    assert (chosen.name, chosen.enabled, chosen.feature_enabled, chosen.reason) == (
        "disabled", False, True, Reason.DEFAULT)


def test_unsatisfied_dependency_is_disabled() -> None:
    state = state_of(flag("parent", enabled=False),
                     flag("child", dependencies=[{"feature": "parent"}]))
    result = evaluate(state, "child", {})
    assert (result.enabled, result.reason, result.error_code) == (False, Reason.DISABLED, None)


def test_raw_json_state_is_accepted_too() -> None:
    doc = {"version": 1, "features": [flag("f")]}
    assert evaluate(doc, "f").enabled
    assert evaluate("junk", "f").error_code is ErrorCode.FLAG_NOT_FOUND  # type: ignore[arg-type]


def test_missing_rollout_parameter_is_a_parse_error() -> None:
    strategy = {"name": "flexibleRollout", "parameters": {"stickiness": "default"}}
    result = evaluate(state_of(flag("f", strategy)), "f", {"userId": "1"})
    assert result.error_code is ErrorCode.PARSE_ERROR and "rollout" in (result.error_message or "")


@pytest.mark.serial  # under 25 us a call, by the wall clock
def test_evaluation_is_precompiled_not_parsed_per_call() -> None:
    constraint = {"contextName": "version", "operator": "SEMVER_GTE", "value": "2.0.0"}
    state = state_of(flag("f", {**rollout(50), "constraints": [constraint]},
                          variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]))
    ctx = {"userId": "42", "properties": {"version": "2.1.0"}}
    started = time.perf_counter()
    for _ in range(20_000):
        evaluate(state, "f", ctx)
        variant(state, "f", ctx)
    per_call = (time.perf_counter() - started) / 40_000
    assert per_call < 25e-6, f"{per_call * 1e6:.1f} us per evaluation"
