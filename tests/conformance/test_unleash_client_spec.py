"""Runs every case of Unleash's client specification against turnout's flag engine.

A case gives a state (a client API response, or delta events to apply in order), a
context and a flag; ``tests`` expect ``isEnabled``'s answer and ``variantTests`` the
variant. None is skipped: the count is checked too.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from unleash_spec import EXPECTED_CASES, EXPECTED_FILES, SpecCase, load_cases

from turnout.flags import FlagState, evaluate, variant


@cache
def _compiled(file: str) -> FlagState:
    state: dict[str, Any] = next(c.state for c in load_cases() if c.file == file)
    if "events" in state:  # the delta API: start empty, apply the events in order
        return FlagState.from_json({"version": 1, "features": []}).apply(state["events"])
    return FlagState.from_json(state)


def test_case(spec_case: SpecCase) -> None:
    state = _compiled(spec_case.file)
    assert not state.problems
    if spec_case.kind == "enabled":
        result = evaluate(state, spec_case.toggle, spec_case.context)
        assert result.enabled is spec_case.expected, result
    else:
        chosen = variant(state, spec_case.toggle, spec_case.context)
        assert chosen.to_unleash() == spec_case.expected, chosen


def test_whole_specification_is_present() -> None:
    cases = load_cases()
    assert len({case.file for case in cases}) == EXPECTED_FILES
    assert len(cases) == EXPECTED_CASES
