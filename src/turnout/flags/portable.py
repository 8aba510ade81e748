"""Checks that a definition reads the same in turnout and in Unleash's official SDKs.

The official SDKs evaluate with yggdrasil, which pastes each strategy into a rule text and
parses that. What it reads differs from what a person may mean in a few places, and a
definition that reads differently would be answered differently by turnout and by every
SDK fed from `turnout server`. So ``turnout.flags.definition`` refuses, with the field
path, anything that does not read the same:

- the operand in the wrong field: IN, NOT_IN, STR_* and IN_CIDR read ``values`` only (a
  ``value`` is ignored: STR_CONTAINS with a singular ``value`` matches nothing there, and
  its flag is off altogether); NUM_*, DATE_*, SEMVER_* and REGEX read ``value`` only;
- operands the rule grammar reads otherwise or not at all: numbers Python reads but the
  grammar does not (``1_000``, ``.5``, ``inf``), dates without an offset or with more
  than milliseconds, semantic versions the ``semver`` crate refuses;
- text pasted between quotes that does not come back as it went in (a trailing
  backslash; a ``"`` or ``\\`` in a context name, stickiness field, group id or host name,
  which are pasted without escaping) and addresses the ``ipnetwork`` crate cannot read.

Each check returns ``(path, message)`` pairs; an empty list means the part is portable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import re2

from turnout.flags.constraints import LIST_OPERATORS, as_text
from turnout.flags.semver import semver_operand
from turnout.flags.values import (
    date_operand,
    fits_unquoted,
    number_operand,
    parse_network,
    rust_trim,
    survives_quoting,
)

Path = tuple[str | int, ...]
Problems = list[tuple[Path, str]]

_BACKSLASH = ("ends with a backslash, which the official SDKs read as escaping the closing "
              "quote (the whole flag would be off there)")


def _regex_problem(text: str) -> str | None:
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(text, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return f"not a valid RE2 regular expression: {reason}"
    return None if survives_quoting(text) else _BACKSLASH


def operand_problem(op: str, text: str) -> str | None:
    """Why the official SDKs cannot read `text` as the operand of scalar operator `op`."""
    if op.startswith("NUM_"):
        if number_operand(text) is None:
            return (f"{op} needs a number like 12, -3.5 or 1e3 (no '_', no leading '.', not "
                    f"inf or nan), got {text!r}")
        return None
    if op.startswith("DATE_"):
        if date_operand(text) is None:
            return (f"{op} needs a date and time with an offset, like 2030-01-31T12:00:00Z or "
                    f"2030-01-31T12:00:00.250+01:00 (milliseconds at most), got {text!r}")
        return None
    if op.startswith("SEMVER_"):
        if semver_operand(text) is None:
            return f"{op} needs a semantic version like 1.2.3 or 2.0.0-rc.1, got {text!r}"
        return None
    return _regex_problem(text)


def _operands(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else []


def _list_problems(op: str, raw: Mapping[str, Any], path: Path) -> Problems:
    out: Problems = []
    value = as_text(raw.get("value"))
    if value:
        out.append(((*path, "value"), f"{op} reads a list: write values: [{value!r}] (the "
                                      "official SDKs ignore 'value' here)"))
    values = [as_text(v) for v in _operands(raw.get("values"))]
    if not any(v is not None for v in values):
        out.append(((*path, "values"), f"{op} needs a list of at least one value"))
    for i, text in enumerate(values):
        if text is None:
            continue
        if op == "IN_CIDR" and parse_network(text) is None:
            out.append(((*path, "values", i), f"{text!r} is not an IP address or CIDR block "
                                              "(no spaces)"))
        elif not survives_quoting(text):
            out.append(((*path, "values", i), _BACKSLASH))
    return out


def constraint_problems(raw: Any, path: Path) -> Problems:
    """What of one constraint the official SDKs would read otherwise, by its operator."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("operator"), str):
        return []
    op = raw["operator"]
    out: Problems = []
    name = raw.get("contextName")
    if isinstance(name, str) and not fits_unquoted(name):
        out.append(((*path, "contextName"), "a context name cannot hold '\"' or '\\'"))
    if op in LIST_OPERATORS:
        return out + _list_problems(op, raw, path)
    if any(as_text(v) for v in _operands(raw.get("values"))):
        out.append(((*path, "values"), f"{op} reads one value: write value: ... (the official "
                                       "SDKs ignore 'values' here)"))
    value = as_text(raw.get("value"))
    if value is None:
        return [*out, ((*path, "value"), f"{op} needs one 'value'")]
    problem = operand_problem(op, value)
    return out + ([((*path, "value"), problem)] if problem else [])


def _entries(raw: Any) -> list[str]:
    text = as_text(raw)
    return [] if text is None else [rust_trim(part) for part in text.split(",")]


def parameter_problems(params: Mapping[str, Any], path: Path) -> Problems:
    """Strategy parameters the official SDKs would read otherwise."""
    out: Problems = []
    at = (*path, "parameters")
    for key in ("groupId", "stickiness"):
        text = as_text(params.get(key))
        if text is not None and not fits_unquoted(text):
            out.append(((*at, key), f"{key} cannot hold '\"' or '\\'"))
    out.extend(((*at, "userIds"), f"user id {entry!r} {_BACKSLASH}")
               for entry in _entries(params.get("userIds")) if not survives_quoting(entry))
    out.extend(((*at, "IPs"), f"{entry!r} is not an IP address or CIDR block")
               for entry in _entries(params.get("IPs")) if entry and parse_network(entry) is None)
    out.extend(((*at, "hostNames"), f"host name {entry!r} cannot hold '\"' or '\\'")
               for entry in _entries(params.get("hostNames")) if not fits_unquoted(entry))
    return out
