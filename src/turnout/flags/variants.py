"""Weighted variants: overrides first, then a sticky hash over the weights.

A variant set belongs to a flag or to one of its strategies. Choosing one follows
Unleash: an override (context field in a value list) wins; otherwise the stickiness
field (``default`` = userId, sessionId, remoteAddress, else random) is hashed with the
variant seed into ``1..total weight`` and the first variant whose running weight
reaches that point is chosen. Weights of ``fix`` and ``variable`` variants are
normalised the way the Unleash server does before the SDKs see them, so a state
written by hand with ``weightType`` behaves like one served by Unleash.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from turnout.flags.constraints import DefinitionError, Getter, field_getter, text_list
from turnout.flags.hashing import random_identifier, variant_bucket
from turnout.flags.model import Context, Payload, Reason, VariantResult

TOTAL_WEIGHT = 1000
_DEFAULT_FIELDS = ("userId", "sessionId", "remoteAddress")


def _seed_getter(stickiness: str) -> Callable[[Context], str]:
    fields = _DEFAULT_FIELDS if stickiness == "default" else (stickiness,)
    getters = tuple(field_getter(name) for name in fields)

    def seed(ctx: Context) -> str:
        for get in getters:
            value = get(ctx)
            if value:
                return value
        return random_identifier()

    return seed


def _weight(raw: Any, name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise DefinitionError(f"variant {name!r} needs a non-negative weight, got {raw!r}")
    if raw != int(raw):
        raise DefinitionError(f"variant {name!r} has a fractional weight {raw!r}")
    return int(raw)


def normalise_weights(raw: list[Mapping[str, Any]], weights: list[int]) -> list[int]:
    """Spread what the ``fix`` variants leave of 1000 evenly over the ``variable`` ones.

    Applies only when the definitions carry ``weightType``; it is a no-op on weights
    the Unleash server already normalised.
    """
    if not any("weightType" in item for item in raw):
        return weights
    variable = [i for i, item in enumerate(raw) if item.get("weightType") != "fix"]
    fixed = sum(w for i, w in enumerate(weights) if i not in variable)
    if not variable or fixed > TOTAL_WEIGHT:
        return weights
    share, remainder = divmod(TOTAL_WEIGHT - fixed, len(variable))
    out = list(weights)
    for rank, index in enumerate(variable):
        out[index] = share + (1 if rank < remainder else 0)
    return out


def _payload(raw: Any, name: str) -> Payload | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        raise DefinitionError(f"variant {name!r} has a malformed payload")
    value = raw.get("value")
    if not isinstance(value, str):
        raise DefinitionError(f"variant {name!r} payload value must be a string")
    return Payload(type=raw["type"], value=value)


def _overrides(raw: Any, name: str) -> list[tuple[Getter, frozenset[str]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DefinitionError(f"variant {name!r} overrides must be a list")
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("contextName"), str):
            raise DefinitionError(f"variant {name!r} has a malformed override")
        values = text_list(item.get("values"), f"variant {name!r} override values")
        out.append((field_getter(item["contextName"]), frozenset(values)))
    return out


class VariantSet:
    """Compiled variants of a flag or strategy, with their results built in advance."""

    __slots__ = ("_cumulative", "_group", "_overrides", "_results", "_seed", "_total")

    def __init__(self, flag: str, group: str, stickiness: str, raw: list[Any]) -> None:
        if not all(isinstance(item, Mapping) for item in raw):
            raise DefinitionError(f"variants of {flag!r} must be objects")
        names = [item.get("name") for item in raw]
        if not all(isinstance(name, str) for name in names):
            raise DefinitionError(f"every variant of {flag!r} needs a name")
        weights = normalise_weights(raw, [_weight(i.get("weight"), n) for i, n in
                                          zip(raw, names, strict=True)])
        kept = [i for i, w in enumerate(weights) if w > 0]
        many = len(kept) > 1
        self._group, self._seed = group, _seed_getter(stickiness)
        self._total = sum(weights)
        self._cumulative: list[int] = []
        self._results: list[VariantResult] = []
        self._overrides: list[tuple[Getter, frozenset[str], VariantResult]] = []
        running = 0
        for index, item in enumerate(raw):
            name = str(names[index])
            payload = _payload(item.get("payload"), name)
            for get, values in _overrides(item.get("overrides"), name):
                self._overrides.append((get, values, self._result(
                    flag, name, payload, Reason.TARGETING_MATCH)))
            if index in kept:
                running += weights[index]
                self._cumulative.append(running)
                self._results.append(self._result(
                    flag, name, payload, Reason.SPLIT if many else Reason.STATIC))

    @staticmethod
    def _result(flag: str, name: str, payload: Payload | None, reason: Reason) -> VariantResult:
        return VariantResult(flag=flag, name=name, enabled=True, feature_enabled=True,
                             reason=reason, payload=payload)

    @property
    def empty(self) -> bool:
        """No variant can be chosen (none defined, or all weigh nothing)."""
        return self._total <= 0

    def select(self, ctx: Context) -> VariantResult:
        """The variant for ``ctx``; call only when not ``empty``."""
        for get, values, result in self._overrides:
            if get(ctx) in values:
                return result
        target = variant_bucket(self._group, self._seed(ctx), self._total)
        return self._results[bisect_left(self._cumulative, target)]


def compile_variants(raw: Any, flag: str, group: str, stickiness: str | None) -> VariantSet | None:
    """A variant set, or None when there are no variants with weight.

    ``stickiness`` (a strategy's own, for strategy variants) wins over the first
    variant's; with neither, stickiness is ``default``.
    """
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise DefinitionError(f"variants of {flag!r} must be a list")
    if not raw:
        return None
    first = raw[0].get("stickiness") if isinstance(raw[0], Mapping) else None
    chosen = stickiness or (first if isinstance(first, str) and first else "default")
    variants = VariantSet(flag, group, chosen, raw)
    return None if variants.empty else variants
