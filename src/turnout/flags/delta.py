"""Unleash's delta API: events that change a flag state, applied in order.

Events are ``hydration`` (replace every flag and segment), ``feature-updated``,
``feature-removed``, ``segment-updated`` and ``segment-removed``. Applying a batch
edits copies of the raw definitions first and compiles afterwards, once: changed
segments, then changed flags and every flag that refers to a changed segment. Flags
the batch did not touch keep their compiled form. A malformed event is skipped and
listed in the new state's ``problems``; nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.flags.constraints import DefinitionError
from turnout.flags.state import Feature, FlagState
from turnout.flags.strategies import compile_segment


@dataclass
class _Changes:
    features: set[str] = field(default_factory=set)
    segments: set[int] = field(default_factory=set)
    everything: bool = False


def _feature_name(raw: Any) -> str:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise DefinitionError("a feature must be an object with a string 'name'")
    return str(raw["name"])


def _segment_id(raw: Any) -> int:
    ident = raw.get("id") if isinstance(raw, Mapping) else None
    if not isinstance(ident, int) or isinstance(ident, bool):
        raise DefinitionError("a segment must be an object with an integer 'id'")
    return ident


def _list(raw: Any, what: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DefinitionError(f"{what} must be a list")
    return raw


def _hydrate(state: FlagState, event: Mapping[str, Any], changes: _Changes,
             problems: list[str]) -> None:
    features = _list(event.get("features"), "hydration features")
    segments = _list(event.get("segments"), "hydration segments")
    state.raw_features, state.raw_segments = {}, {}
    changes.everything = True
    for raw in segments:
        try:
            state.raw_segments[_segment_id(raw)] = raw
        except DefinitionError as exc:
            problems.append(f"segment skipped: {exc}")
    for raw in features:
        try:
            state.raw_features[_feature_name(raw)] = raw
        except DefinitionError as exc:
            problems.append(f"feature skipped: {exc}")


def _apply_one(state: FlagState, event: Any, changes: _Changes, problems: list[str]) -> None:
    if not isinstance(event, Mapping):
        raise DefinitionError("an event must be an object")
    kind = event.get("type")
    if kind == "hydration":
        _hydrate(state, event, changes, problems)
    elif kind == "feature-updated":
        name = _feature_name(event.get("feature"))
        state.raw_features[name] = event["feature"]
        changes.features.add(name)
    elif kind == "feature-removed":
        removed = event.get("featureName")
        if not isinstance(removed, str):
            raise DefinitionError("feature-removed needs a 'featureName'")
        state.raw_features.pop(removed, None)
        changes.features.add(removed)
    elif kind == "segment-updated":
        ident = _segment_id(event.get("segment"))
        state.raw_segments[ident] = event["segment"]
        changes.segments.add(ident)
    elif kind == "segment-removed":
        gone = event.get("segmentId")
        if not isinstance(gone, int):
            raise DefinitionError("segment-removed needs an integer 'segmentId'")
        state.raw_segments.pop(gone, None)
        changes.segments.add(gone)
    else:
        raise DefinitionError(f"unknown event type {kind!r}")


def _recompile(state: FlagState, changes: _Changes) -> None:
    if changes.everything:
        changes.segments |= set(state.segments) | set(state.raw_segments)
        changes.features |= set(state.features) | set(state.raw_features)
    for ident in changes.segments:
        raw = state.raw_segments.get(ident)
        if raw is None:
            state.segments.pop(ident, None)
        else:
            state.segments[ident] = compile_segment(raw)
    touched = {name for name, feature in state.features.items()
               if not feature.segment_ids.isdisjoint(changes.segments)}
    for name in changes.features | touched:
        raw_feature = state.raw_features.get(name)
        if raw_feature is None:
            state.features.pop(name, None)
        else:
            state.features[name] = Feature(name, raw_feature, state.segments, state.hostname)


def apply_events(state: FlagState, events: Any) -> FlagState:
    """A new state: ``state`` with ``events`` applied in order."""
    new = state._copy()
    problems = list(state.problems)
    changes = _Changes()
    if not isinstance(events, list):
        problems.append("delta events must be a list")
        events = []
    for index, event in enumerate(events):
        try:
            _apply_one(new, event, changes, problems)
        except DefinitionError as exc:
            problems.append(f"event {index} skipped: {exc}")
    _recompile(new, changes)
    new.problems = tuple(problems)
    return new
