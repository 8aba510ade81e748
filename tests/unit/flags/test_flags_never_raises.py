"""Evaluation never raises, whatever JSON-like junk it is given."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.flags import ErrorCode, FlagState, Reason, Result, VariantResult, evaluate, variant

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
operators = st.sampled_from(["IN", "NOT_IN", "STR_CONTAINS", "NUM_LT", "DATE_AFTER",
                             "SEMVER_GT", "REGEX", "IN_CIDR", "BOGUS"])
strategy_names = st.sampled_from(["default", "flexibleRollout", "userWithId",
                                  "gradualRolloutUserId", "remoteAddress", "nope"])
constraint = st.fixed_dictionaries(
    {"contextName": st.sampled_from(["userId", "x"]) | junk, "operator": operators},
    optional={"values": st.lists(scalars, max_size=3) | junk, "value": scalars,
              "inverted": junk, "caseInsensitive": junk},
)
strategy = st.fixed_dictionaries(
    {"name": strategy_names | junk},
    optional={"parameters": st.dictionaries(st.sampled_from(
        ["rollout", "stickiness", "groupId", "userIds", "IPs", "percentage"]), scalars) | junk,
        "constraints": st.lists(constraint, max_size=3) | junk,
        "segments": st.lists(st.integers(0, 3) | junk, max_size=2),
        "variants": junk},
)
feature = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b"]) | junk, "enabled": st.booleans() | junk},
    optional={"strategies": st.lists(strategy, max_size=3) | junk, "variants": junk,
              "dependencies": st.lists(st.fixed_dictionaries(
                  {"feature": st.sampled_from(["a", "b"]) | junk},
                  optional={"enabled": junk, "variants": junk}), max_size=2) | junk},
)
document = st.fixed_dictionaries(
    {"features": st.lists(feature, max_size=4) | junk},
    optional={"version": junk, "segments": st.lists(st.fixed_dictionaries(
        {"id": st.integers(0, 3) | junk, "constraints": st.lists(constraint, max_size=2)}),
        max_size=3) | junk},
) | junk
context = st.fixed_dictionaries({}, optional={
    "userId": scalars, "sessionId": scalars, "remoteAddress": scalars,
    "currentTime": scalars, "properties": junk}) | junk


@settings(max_examples=400, deadline=None)
@given(doc=document, name=st.sampled_from(["a", "b"]) | junk, ctx=context)
def test_evaluate_and_variant_never_raise(doc: Any, name: Any, ctx: Any) -> None:
    state = FlagState.from_json(doc)
    result = evaluate(state, name, ctx)
    chosen = variant(state, name, ctx)
    assert isinstance(result, Result) and isinstance(chosen, VariantResult)
    assert isinstance(result.enabled, bool)
    if result.reason is Reason.ERROR:
        assert not result.enabled and result.error_code is not None
    if chosen.enabled:
        assert chosen.feature_enabled and chosen.name != "disabled"
    if not chosen.feature_enabled:
        assert chosen.name == "disabled" and not chosen.enabled


@settings(max_examples=100, deadline=None)
@given(doc=junk, events=junk)
def test_loading_and_applying_junk_never_raises(doc: Any, events: Any) -> None:
    state = FlagState.from_json(doc).apply(events)
    assert isinstance(state.problems, tuple)
    assert evaluate(state, "a", {}).error_code in (None, *ErrorCode)
