"""Unleash constraints, compiled once into predicates over a context.

A constraint names a context field, an operator and its operand(s), optionally
``inverted`` and ``caseInsensitive``. Which operand an operator reads is the official
engine's (yggdrasil's) rule: IN, NOT_IN, STR_*, IN_CIDR read ``values`` only, the NUM_*,
DATE_*, SEMVER_* and REGEX operators read ``value`` only; the other field is ignored.
Compiling parses every operand up front (numbers, dates, semver keys, regular
expressions, CIDR networks) so a check at request time is a field lookup and one
comparison; operands and context values are parsed as that engine parses them
(``turnout.flags.values``). A malformed constraint raises ``DefinitionError`` here, at
compile time; the strategy holding it then never matches and reports the problem.

Regular expressions use RE2 (``google-re2``), the dialect Unleash's server validates
and its engine runs: linear time, POSIX classes, inline flags anywhere, no
backreferences or lookaround.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import re2

from turnout.flags.model import Context
from turnout.flags.semver import SemverKey, semver_key, semver_operand
from turnout.flags.values import (
    Instant,
    Network,
    address_in,
    date_operand,
    instant_of,
    number_operand,
    parse_instant,
    parse_network,
    parse_number,
)

Getter = Callable[[Context], str | None]
Predicate = Callable[[Context], bool]
LIST_OPERATORS = frozenset({"IN", "NOT_IN", "STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH",
                            "IN_CIDR"})
_EPSILON = sys.float_info.epsilon  # NUM_EQ is |a - b| < epsilon in the official engine


class DefinitionError(ValueError):
    """A flag, strategy, segment or constraint definition that cannot be evaluated."""


def as_text(value: Any) -> str | None:
    """A context value as the string Unleash compares, or None when there is none."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, Mapping | list | tuple | set):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def raw_getter(name: str) -> Callable[[Context], Any]:
    """Looks ``name`` up at the top of the context, then among its ``properties``."""

    def get(ctx: Context) -> Any:
        value = ctx.get(name)
        if value is None:
            props = ctx.get("properties")
            if props is not None and isinstance(props, Mapping):
                return props.get(name)
        return value

    return get


def field_getter(name: str) -> Getter:
    """Like ``raw_getter`` but yields the value as text."""
    get_raw = raw_getter(name)

    def get(ctx: Context) -> str | None:
        value = get_raw(ctx)
        return value if value.__class__ is str else as_text(value)

    return get


def text_list(raw: Any, what: str) -> tuple[str, ...]:
    """A list of operand strings; numbers are accepted as their text."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DefinitionError(f"{what} must be a list")
    out = []
    for item in raw:
        text = as_text(item)
        if text is None or isinstance(item, bool):
            raise DefinitionError(f"{what} holds a non-string item {item!r}")
        out.append(text)
    return tuple(out)


def parse_date(value: Any) -> Instant | None:
    """A context date: RFC 3339 text with an offset, or a datetime (as an SDK sends it)."""
    if isinstance(value, datetime):
        return instant_of(value)
    if isinstance(value, str):
        return parse_instant(value)
    return None


def _membership(get: Getter, values: tuple[str, ...], negate: bool) -> Predicate:
    allowed = frozenset(values)
    if negate:
        return lambda ctx: get(ctx) not in allowed
    return lambda ctx: get(ctx) in allowed


def _strings(get: Getter, op: str, values: tuple[str, ...], fold: bool) -> Predicate:
    needles = tuple(v.lower() for v in values) if fold else values

    def check(ctx: Context) -> bool:
        text = get(ctx)
        if text is None:
            return False
        if fold:
            text = text.lower()
        if op == "STR_STARTS_WITH":
            return text.startswith(needles)
        if op == "STR_ENDS_WITH":
            return text.endswith(needles)
        return any(needle in text for needle in needles)

    return check


def _near(a: float, b: float) -> bool:
    return abs(a - b) < _EPSILON


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": operator.eq, "GT": operator.gt, "GTE": operator.ge,
    "LT": operator.lt, "LTE": operator.le, "AFTER": operator.gt, "BEFORE": operator.lt,
}


def _number(get: Getter, op: str, operand: str) -> Predicate:
    target = number_operand(operand)
    if target is None:
        raise DefinitionError(f"{op} needs a number like 12, -3.5 or 1e3, got {operand!r}")
    compare = _near if op == "NUM_EQ" else _COMPARE[op.removeprefix("NUM_")]

    def check(ctx: Context) -> bool:
        text = get(ctx)
        number = parse_number(text) if text is not None else None
        return number is not None and compare(number, target)

    return check


def _date(name: str, op: str, operand: str) -> Predicate:
    target = date_operand(operand)
    if target is None:
        raise DefinitionError(f"{op} needs a date like 2030-01-31T12:00:00Z (milliseconds at "
                              f"most, Z or an offset like +01:00), got {operand!r}")
    compare = _COMPARE[op.removeprefix("DATE_")]
    get = raw_getter(name)
    now_if_missing = name == "currentTime"

    def check(ctx: Context) -> bool:
        raw = get(ctx)
        if raw is None and now_if_missing:
            raw = datetime.now(UTC)
        when = parse_date(raw)
        return when is not None and compare(when, target)

    return check


_context_semver = lru_cache(maxsize=4096)(semver_key)
"""Context versions repeat (a fleet runs few releases): parse each once."""


def _semver(get: Getter, op: str, operand: str) -> Predicate:
    target = semver_operand(operand)
    if target is None:
        raise DefinitionError(f"{op} needs a semantic version, got {operand!r}")
    compare = _COMPARE[op.removeprefix("SEMVER_")]

    def check(ctx: Context) -> bool:
        text = get(ctx)
        key: SemverKey | None = _context_semver(text) if text is not None else None
        return key is not None and compare(key, target)

    return check


def _regex(get: Getter, operand: str, fold: bool) -> Predicate:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not fold
    try:
        pattern = re2.compile(operand, options)
    except re2.error as exc:
        raise DefinitionError(f"invalid RE2 regular expression {operand!r}: {exc}") from None

    def check(ctx: Context) -> bool:
        text = get(ctx)
        return text is not None and pattern.search(text) is not None

    return check


def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The entries that parse as an IP address or CIDR block; the others are ignored."""
    return tuple(n for n in map(parse_network, entries) if n is not None)


def _cidr(get: Getter, values: tuple[str, ...]) -> Predicate:
    networks = parse_networks(values)
    if values and not networks:
        raise DefinitionError(f"IN_CIDR has no valid address or CIDR block in {list(values)}")
    return lambda ctx: address_in(get(ctx), networks)


def _operand(raw: Mapping[str, Any], op: str) -> str:
    text = as_text(raw.get("value"))
    if text is None:
        raise DefinitionError(f"{op} needs a 'value' (the official SDKs ignore 'values' here)")
    return text


def _base(raw: Mapping[str, Any], name: str, op: str) -> Predicate:
    get = field_getter(name)
    fold = raw.get("caseInsensitive") is True
    if op in LIST_OPERATORS:
        values = text_list(raw.get("values"), f"{op} values")
        if not values and op not in ("IN", "NOT_IN"):
            raise DefinitionError(f"{op} needs a non-empty 'values' list (the official SDKs "
                                  "ignore 'value' here)")
        if op == "IN_CIDR":
            return _cidr(get, values)
        if op in ("IN", "NOT_IN"):
            return _membership(get, values, negate=op == "NOT_IN")
        return _strings(get, op, values, fold)
    operand = _operand(raw, op)
    if op.startswith("NUM_") and op[4:] in ("EQ", "GT", "GTE", "LT", "LTE"):
        return _number(get, op, operand)
    if op in ("DATE_AFTER", "DATE_BEFORE"):
        return _date(name, op, operand)
    if op.startswith("SEMVER_") and op[7:] in ("EQ", "GT", "GTE", "LT", "LTE"):
        return _semver(get, op, operand)
    if op == "REGEX":
        return _regex(get, operand, fold)
    raise DefinitionError(f"unknown constraint operator {op!r}")


def compile_constraint(raw: Any) -> Predicate:
    """A predicate for one constraint; raises ``DefinitionError`` if it is malformed."""
    if not isinstance(raw, Mapping):
        raise DefinitionError(f"a constraint must be an object, got {raw!r}")
    name, op = raw.get("contextName"), raw.get("operator")
    if not isinstance(name, str) or not name:
        raise DefinitionError("a constraint needs a 'contextName'")
    if not isinstance(op, str):
        raise DefinitionError(f"constraint on {name!r} needs an 'operator'")
    base = _base(raw, name, op)
    if raw.get("inverted") is True:
        return lambda ctx: not base(ctx)
    return base


def compile_constraints(raw: Any, what: str) -> tuple[Predicate, ...]:
    """Predicates for a list of constraints (all must hold)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DefinitionError(f"{what} constraints must be a list")
    return tuple(compile_constraint(item) for item in raw)
