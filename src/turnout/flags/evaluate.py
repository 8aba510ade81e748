"""The evaluation functions: ``evaluate`` (is a flag on?) and ``variant`` (which one?).

Both are pure functions of a compiled ``FlagState``, a flag name and an Unleash
context, and neither raises: an unknown flag answers off with FLAG_NOT_FOUND, a
malformed definition or context answers off with ERROR and an error code, and any
unexpected failure is caught and reported the same way. The order follows Unleash:
a switched-off flag is off; a flag whose parent dependency is not as required is off;
a flag without strategies is on; otherwise the first strategy that matches turns it
on and its variants (or else the flag's) decide the variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from turnout.flags.model import (
    Context,
    ErrorCode,
    Result,
    VariantResult,
    disabled_variant,
    failed,
    not_found,
)
from turnout.flags.state import Feature, FlagState
from turnout.flags.strategies import Strategy

_EMPTY: Mapping[str, Any] = {}


class _InvalidContextError(Exception):
    pass


def _state(state: FlagState | Mapping[str, Any]) -> FlagState:
    if isinstance(state, FlagState):
        return state
    return FlagState.from_json(state)


def _context(context: Context | None, now: datetime | None) -> Context:
    if context is None:
        context = _EMPTY
    elif type(context) is not dict and not isinstance(context, Mapping):
        raise _InvalidContextError(f"context must be a mapping, got {type(context).__name__}")
    if now is not None and context.get("currentTime") is None:
        return {**context, "currentTime": now}
    return context


def _resolve(state: FlagState, feature: Feature, ctx: Context) -> tuple[Result, Strategy | None]:
    if feature.broken is not None:
        return feature.broken, None
    if not feature.enabled:
        return feature.off, None
    if feature.dependencies and not _dependencies_met(state, feature, ctx):
        return feature.dependency_off, None
    if not feature.strategies:
        return feature.static_on, None
    for strategy in feature.strategies:
        if strategy.matches(ctx):
            return strategy.result, strategy
    return feature.no_match, None


def _choose(feature: Feature, result: Result, strategy: Strategy | None,
            ctx: Context) -> VariantResult:
    if not result.enabled:
        return feature.disabled_variant(result)
    variants = strategy.variants if strategy is not None else None
    if variants is None:
        variants = feature.variants
    if variants is None:
        return feature.empty_variant
    return variants.select(ctx)


def _dependencies_met(state: FlagState, feature: Feature, ctx: Context) -> bool:
    for dependency in feature.dependencies:
        parent = state.features.get(dependency.feature)
        if parent is None or parent.dependencies:
            return False  # unknown parent, or a chain: Unleash allows one level only
        result, strategy = _resolve(state, parent, ctx)
        if not dependency.enabled:
            if result.enabled:
                return False
            continue
        if not result.enabled:
            return False
        if dependency.variants and (
            _choose(parent, result, strategy, ctx).name not in dependency.variants
        ):
            return False
    return True


def _flag_name(name: object) -> str:
    return name if isinstance(name, str) else repr(name)


def evaluate(state: FlagState | Mapping[str, Any], name: str, context: Context | None = None,
             *, now: datetime | None = None) -> Result:
    """Whether flag ``name`` is on for ``context``, with the reason; never raises.

    ``now`` stands in for the context's ``currentTime`` when it has none (date
    constraints otherwise use the wall clock). Passing a raw JSON state compiles it on
    every call; compile it once with ``FlagState.from_json`` instead.
    """
    try:
        compiled = _state(state)
        feature = compiled.features.get(name) if isinstance(name, str) else None
        if feature is None:
            return not_found(_flag_name(name))
        return _resolve(compiled, feature, _context(context, now))[0]
    except _InvalidContextError as exc:
        return failed(_flag_name(name), ErrorCode.INVALID_CONTEXT, str(exc))
    except Exception as exc:
        return failed(_flag_name(name), ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")


def variant(state: FlagState | Mapping[str, Any], name: str, context: Context | None = None,
            *, now: datetime | None = None) -> VariantResult:
    """The variant of flag ``name`` for ``context`` (``disabled`` when off); never raises."""
    try:
        compiled = _state(state)
        feature = compiled.features.get(name) if isinstance(name, str) else None
        if feature is None:
            return disabled_variant(not_found(_flag_name(name)))
        ctx = _context(context, now)
        result, strategy = _resolve(compiled, feature, ctx)
        return _choose(feature, result, strategy, ctx)
    except _InvalidContextError as exc:
        return disabled_variant(failed(_flag_name(name), ErrorCode.INVALID_CONTEXT, str(exc)))
    except Exception as exc:
        return disabled_variant(
            failed(_flag_name(name), ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}"))


def is_enabled(state: FlagState | Mapping[str, Any], name: str,
               context: Context | None = None, *, now: datetime | None = None) -> bool:
    """Shorthand for ``evaluate(...).enabled``."""
    return evaluate(state, name, context, now=now).enabled
