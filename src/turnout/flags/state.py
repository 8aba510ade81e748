"""A compiled flag state: Unleash's ``/api/client/features`` document, parsed once.

``FlagState.from_json`` takes the client API response (``version``, ``features``,
``segments``) or a delta document (``events``: hydration, feature-updated,
feature-removed, segment-updated, segment-removed) and compiles every flag into
strategies of ready-made checks with their results built in advance. A state is
immutable: ``apply(events)`` returns a new one that shares every flag the events did
not touch, so a reader holding the old state is never disturbed. Neither call raises:
a flag that cannot be compiled evaluates to off with a PARSE_ERROR, and problems with
the document itself are listed in ``problems``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.flags.constraints import DefinitionError, text_list
from turnout.flags.model import ErrorCode, Reason, Result, VariantResult, disabled_variant, failed
from turnout.flags.strategies import Segment, Strategy, compile_strategy
from turnout.flags.variants import VariantSet, compile_variants


@dataclass(frozen=True, slots=True)
class Dependency:
    """A parent flag this flag requires: on (optionally in one of some variants) or off."""

    feature: str
    enabled: bool = True
    variants: frozenset[str] = frozenset()


def _dependencies(raw: Any) -> tuple[Dependency, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DefinitionError("dependencies must be a list")
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("feature"), str):
            raise DefinitionError("a dependency needs a 'feature' name")
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            raise DefinitionError("a dependency's 'enabled' must be true or false")
        variants = frozenset(text_list(item.get("variants"), "dependency variants"))
        out.append(Dependency(item["feature"], enabled, variants))
    return tuple(out)


def _segment_ids(raw: Mapping[str, Any]) -> frozenset[Any]:
    """The segment ids a flag's strategies refer to (to recompile it when one changes)."""
    strategies = raw.get("strategies")
    if not isinstance(strategies, list):
        return frozenset()
    ids: set[Any] = set()
    for strategy in strategies:
        found = strategy.get("segments") if isinstance(strategy, Mapping) else None
        if isinstance(found, list):
            ids.update(i for i in found if isinstance(i, int | str))
    return frozenset(ids)


class Feature:
    """One compiled flag, with every result it can give that does not depend on a hash."""

    __slots__ = ("_off_variants", "broken", "dependencies", "dependency_off", "empty_variant",
                 "enabled", "name", "no_match", "off", "segment_ids", "static_on",
                 "strategies", "variants")

    def __init__(self, name: str, raw: Mapping[str, Any], segments: Mapping[int, Segment],
                 host: str) -> None:
        self.name = name
        self.segment_ids = _segment_ids(raw)
        self.off = Result(name=name, enabled=False, reason=Reason.DISABLED)
        self.dependency_off = Result(name=name, enabled=False, reason=Reason.DISABLED,
                                     error_message="a flag it depends on is not as required")
        self.static_on = Result(name=name, enabled=True, reason=Reason.STATIC)
        self.no_match = Result(name=name, enabled=False, reason=Reason.DEFAULT)
        self.empty_variant = disabled_variant(self.static_on, feature_enabled=True)
        self.broken: Result | None = None
        self.enabled = False
        self.strategies: tuple[Strategy, ...] = ()
        self.variants: VariantSet | None = None
        self.dependencies: tuple[Dependency, ...] = ()
        try:
            self._compile(raw, segments, host)
        except DefinitionError as exc:
            self.broken = failed(name, ErrorCode.PARSE_ERROR, f"flag {name!r}: {exc}")
        except Exception as exc:  # junk of a shape no check foresaw
            self.broken = failed(name, ErrorCode.PARSE_ERROR,
                                 f"flag {name!r}: {type(exc).__name__}: {exc}")
        offs = (self.off, self.dependency_off, self.no_match, self.broken)
        self._off_variants = {id(r): disabled_variant(r) for r in offs if r is not None}

    def _compile(self, raw: Mapping[str, Any], segments: Mapping[int, Segment],
                 host: str) -> None:
        enabled = raw.get("enabled")
        if not isinstance(enabled, bool):
            raise DefinitionError("'enabled' must be true or false")
        strategies = raw.get("strategies") or []
        if not isinstance(strategies, list):
            raise DefinitionError("'strategies' must be a list")
        self.strategies = tuple(
            compile_strategy(item, self.name, i, segments, host)
            for i, item in enumerate(strategies))
        self.variants = compile_variants(
            raw.get("variants"), self.name, self.name, None)
        self.dependencies = _dependencies(raw.get("dependencies"))
        self.enabled = enabled
        problems = [s.problem for s in self.strategies if s.problem is not None]
        if problems:
            self.no_match = failed(self.name, ErrorCode.PARSE_ERROR, "; ".join(problems))

    def disabled_variant(self, result: Result) -> VariantResult:
        """The ``disabled`` variant for an off ``result`` of this flag."""
        found = self._off_variants.get(id(result))
        return found if found is not None else disabled_variant(result)


def default_hostname() -> str:
    """The host name the applicationHostname strategy compares with."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


class FlagState:
    """Compiled flags and segments, plus the raw definitions they came from."""

    __slots__ = ("features", "hostname", "problems", "raw_features", "raw_segments",
                 "segments", "version")

    def __init__(self, *, version: int = 1, hostname: str | None = None) -> None:
        self.version = version
        self.hostname = hostname if hostname is not None else default_hostname()
        self.features: dict[str, Feature] = {}
        self.segments: dict[int, Segment] = {}
        self.raw_features: dict[str, Mapping[str, Any]] = {}
        self.raw_segments: dict[int, Mapping[str, Any]] = {}
        self.problems: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: Any, *, hostname: str | None = None) -> FlagState:
        """Compile a client API response or a delta document; never raises."""
        empty = cls(hostname=hostname)
        if isinstance(doc, Mapping) and "events" in doc and "features" not in doc:
            return empty.apply(doc.get("events"))
        if not isinstance(doc, Mapping):
            empty.problems = (f"a flag state must be an object, got {type(doc).__name__}",)
            return empty
        version = doc.get("version")
        event = {"type": "hydration", "features": doc.get("features"),
                 "segments": doc.get("segments")}
        state = empty.apply([event])
        state.version = version if isinstance(version, int) else 1
        return state

    def apply(self, events: Any) -> FlagState:
        """A new state with the delta ``events`` applied in order; never raises."""
        from turnout.flags.delta import apply_events

        return apply_events(self, events)

    def _copy(self) -> FlagState:
        state = FlagState(version=self.version, hostname=self.hostname)
        state.features, state.segments = dict(self.features), dict(self.segments)
        state.raw_features, state.raw_segments = dict(self.raw_features), dict(self.raw_segments)
        state.problems = self.problems
        return state

    def to_json(self) -> dict[str, Any]:
        """The state as a client API response."""
        return {"version": self.version, "features": list(self.raw_features.values()),
                "segments": list(self.raw_segments.values())}

    def __contains__(self, name: object) -> bool:
        return name in self.features

    def __len__(self) -> int:
        return len(self.features)
