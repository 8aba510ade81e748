"""Unleash constraints, compiled once into predicates over a context.

A constraint names a context field, an operator and its operand(s) (``values`` for the
list operators, ``value`` for the scalar ones), optionally ``inverted`` and
``caseInsensitive``. Compiling parses every operand up front (numbers, dates, semver
keys, regular expressions, CIDR networks) so a check at request time is a field lookup
and one comparison. A malformed constraint raises ``DefinitionError`` here, at compile
time; the strategy holding it then never matches and reports the problem.

Regular expressions use RE2 (``google-re2``), the dialect Unleash's server validates
and its engine runs: linear time, POSIX classes, inline flags anywhere, no
backreferences or lookaround.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import re2

from turnout.flags.model import Context
from turnout.flags.semver import SemverKey, semver_key

Getter = Callable[[Context], str | None]
Predicate = Callable[[Context], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def parse_date(value: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string or a datetime (naive means UTC)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
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


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": operator.eq, "GT": operator.gt, "GTE": operator.ge,
    "LT": operator.lt, "LTE": operator.le, "AFTER": operator.gt, "BEFORE": operator.lt,
}


def _number(get: Getter, op: str, operand: str) -> Predicate:
    target = _parse_float(operand)
    if target is None:
        raise DefinitionError(f"{op} needs a number, got {operand!r}")
    compare = _COMPARE[op.removeprefix("NUM_")]

    def check(ctx: Context) -> bool:
        number = _parse_float(get(ctx))
        return number is not None and compare(number, target)

    return check


def _date(name: str, op: str, operand: str) -> Predicate:
    target = parse_date(operand)
    if target is None:
        raise DefinitionError(f"{op} needs an ISO 8601 date, got {operand!r}")
    compare = _COMPARE[op.removeprefix("DATE_")]
    get = raw_getter(name)
    now_if_missing = name == "currentTime"

    def check(ctx: Context) -> bool:
        raw = get(ctx)
        if raw is None and now_if_missing:
            return bool(compare(datetime.now(UTC), target))
        when = parse_date(raw)
        return when is not None and compare(when, target)

    return check


_context_semver = lru_cache(maxsize=4096)(semver_key)
"""Context versions repeat (a fleet runs few releases): parse each once."""


def _semver(get: Getter, op: str, operand: str) -> Predicate:
    target = semver_key(operand)
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
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


def address_in(text: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``text`` is an IP address inside one of ``networks``."""
    if text is None:
        return False
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return any(address in network for network in networks)


def _cidr(get: Getter, values: tuple[str, ...]) -> Predicate:
    networks = parse_networks(values)
    if values and not networks:
        raise DefinitionError(f"IN_CIDR has no valid address or CIDR block in {list(values)}")
    return lambda ctx: address_in(get(ctx), networks)


def _operand(raw: Mapping[str, Any], values: tuple[str, ...], op: str) -> str:
    value = raw.get("value")
    if value is None and len(values) == 1:
        value = values[0]
    text = as_text(value)
    if text is None:
        raise DefinitionError(f"{op} needs a 'value'")
    return text


def _base(raw: Mapping[str, Any], name: str, op: str) -> Predicate:
    values = text_list(raw.get("values"), f"{op} values")
    get = field_getter(name)
    fold = raw.get("caseInsensitive") is True
    if op in ("IN", "NOT_IN"):
        return _membership(get, values, negate=op == "NOT_IN")
    if op in ("STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH"):
        if not values and raw.get("value") is not None:
            values = (_operand(raw, values, op),)
        return _strings(get, op, values, fold)
    if op == "IN_CIDR":
        return _cidr(get, values)
    operand = _operand(raw, values, op)
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
