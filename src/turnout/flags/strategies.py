"""Unleash activation strategies, compiled into one list of checks per strategy.

A strategy is on for a context when every constraint holds, every referenced segment's
constraints hold, and its activation rule (user list, percentage of a sticky hash,
address, host name) says yes. The checks run cheapest first. A strategy that cannot
be evaluated (unknown name, missing segment, malformed constraint or parameter)
compiles to one that never matches and carries the problem, which ``evaluate`` turns
into an ERROR reason when nothing else turned the flag on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.flags.constraints import (
    DefinitionError,
    Predicate,
    as_text,
    compile_constraints,
    field_getter,
    parse_networks,
)
from turnout.flags.hashing import normalized_hash, random_bucket
from turnout.flags.model import Reason, Result
from turnout.flags.values import address_in, rust_trim
from turnout.flags.variants import VariantSet, compile_variants

_PERCENT = re.compile(r"\+?[0-9]+")  # Rust's usize::from_str


@dataclass(frozen=True, slots=True)
class Segment:
    """A compiled segment: shared constraints, or the problem that broke them."""

    checks: tuple[Predicate, ...]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Strategy:
    """A compiled strategy with the result it yields when it matches."""

    checks: tuple[Predicate, ...]
    result: Result
    variants: VariantSet | None
    problem: str | None = None

    def matches(self, ctx: Mapping[str, Any]) -> bool:
        """Whether every check holds for ``ctx``."""
        for check in self.checks:  # noqa: SIM110 - a plain loop beats all() on the hot path
            if not check(ctx):
                return False
        return True


def _never(ctx: Mapping[str, Any]) -> bool:
    return False


def compile_segment(raw: Any) -> Segment:
    """A segment's constraints; a malformed one yields a segment that never matches."""
    try:
        if not isinstance(raw, Mapping):
            raise DefinitionError("a segment must be an object")
        return Segment(compile_constraints(raw.get("constraints"), f"segment {raw.get('id')}"))
    except Exception as exc:  # DefinitionError, or junk of a shape no check foresaw
        return Segment((_never,), f"segment: {exc}")


def _percentage(params: Mapping[str, Any], key: str) -> int:
    """A percentage as the official engine reads it: a whole number 0..100, nothing else."""
    text = as_text(params.get(key))
    if text is None:
        raise DefinitionError(f"parameter {key!r} is missing")
    if _PERCENT.fullmatch(text) is None or int(text) > 100:
        raise DefinitionError(f"parameter {key!r} must be a whole number 0..100, got {text!r}")
    return int(text)


def _rollout(group: str, percentage: int, stickiness: str) -> tuple[Predicate | None, Reason]:
    if not percentage > 0:
        return _never, Reason.SPLIT
    if stickiness == "random":
        return (None, Reason.STATIC) if percentage >= 100 else (
            lambda ctx: random_bucket() <= percentage, Reason.SPLIT)
    fields = ("userId", "sessionId") if stickiness == "default" else (stickiness,)
    getters = tuple(field_getter(name) for name in fields)
    fallback_random = stickiness == "default"
    if fallback_random and percentage >= 100:
        return None, Reason.STATIC

    def check(ctx: Mapping[str, Any]) -> bool:
        for get in getters:
            identifier = get(ctx)
            if identifier is not None:  # "" is a value too, as for the official engine
                return normalized_hash(group, identifier) <= percentage
        return fallback_random and random_bucket() <= percentage

    return check, Reason.SPLIT if percentage < 100 else Reason.TARGETING_MATCH


def _listed(params: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    """A comma-separated parameter, each entry trimmed (empty ones kept); None if absent."""
    text = as_text(params.get(key))
    return None if text is None else tuple(rust_trim(part) for part in text.split(","))


Activation = tuple[Predicate | None, Reason]


def _activation(name: str, params: Mapping[str, Any], flag: str, host: str) -> Activation:
    group_id = as_text(params.get("groupId"))
    group = flag if group_id is None else group_id
    if name == "default":
        return None, Reason.STATIC
    if name == "flexibleRollout":
        stickiness = as_text(params.get("stickiness"))
        return _rollout(group, _percentage(params, "rollout"), stickiness or "default")
    if name in ("gradualRolloutUserId", "gradualRolloutSessionId"):
        if group_id is None:  # the official engine never turns these on without one
            return _never, Reason.SPLIT
        field = "userId" if name == "gradualRolloutUserId" else "sessionId"
        return _rollout(group, _percentage(params, "percentage"), field)
    if name == "gradualRolloutRandom":
        return _rollout(group, _percentage(params, "percentage"), "random")
    if name == "userWithId":
        users, get_user = frozenset(_listed(params, "userIds") or ()), field_getter("userId")
        return (lambda ctx: get_user(ctx) in users), Reason.TARGETING_MATCH
    if name == "remoteAddress":
        networks, get_ip = parse_networks(_listed(params, "IPs") or ()), field_getter("remoteAddress")
        return (lambda ctx: address_in(get_ip(ctx), networks)), Reason.TARGETING_MATCH
    if name == "applicationHostname":
        hosts = {h.lower() for h in _listed(params, "hostNames") or ()}
        return (None if host.lower() in hosts else _never), Reason.TARGETING_MATCH
    raise DefinitionError(f"unknown strategy {name!r}")


def _segment_checks(raw: Any, segments: Mapping[int, Segment]) -> list[Predicate]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DefinitionError("strategy segments must be a list of ids")
    checks: list[Predicate] = []
    for ident in raw:
        segment = segments.get(ident) if isinstance(ident, int) else None
        if segment is None:
            raise DefinitionError(f"segment {ident!r} not found")
        if segment.problem is not None:
            raise DefinitionError(segment.problem)
        checks.extend(segment.checks)
    return checks


def _build(raw: Any, flag: str, index: int, segments: Mapping[int, Segment],
           host: str) -> Strategy:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise DefinitionError("a strategy must be an object with a 'name'")
    params = raw.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise DefinitionError("strategy parameters must be an object")
    checks = list(compile_constraints(raw.get("constraints"), f"strategy {raw['name']!r}"))
    checks.extend(_segment_checks(raw.get("segments"), segments))
    activation, reason = _activation(raw["name"], params, flag, host)
    if checks and reason is Reason.STATIC:
        reason = Reason.TARGETING_MATCH
    if activation is not None:
        checks.append(activation)
    variants = compile_variants(raw.get("variants"), flag,
                                as_text(params.get("groupId")) or flag,
                                as_text(params.get("stickiness")))
    result = Result(name=flag, enabled=True, reason=reason, strategy=index)
    return Strategy(tuple(checks), result, variants)


def compile_strategy(raw: Any, flag: str, index: int, segments: Mapping[int, Segment],
                     host: str) -> Strategy:
    """Compile one strategy; a malformed one never matches and records why."""
    try:
        return _build(raw, flag, index, segments, host)
    except Exception as exc:  # DefinitionError, or junk of a shape no check foresaw
        off = Result(name=flag, enabled=False, reason=Reason.DEFAULT, strategy=index)
        return Strategy((_never,), off, None, f"strategy {index}: {exc}")

