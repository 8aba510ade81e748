"""Validation of flag and segment definitions written by people (CLI files, admin API bodies).

The engine (``turnout.flags.state``) never raises and turns a malformed flag into one that
is off with a PARSE_ERROR; that is right for what an SDK receives, wrong for what a user
types. So a definition is checked here before it is stored, in two passes that each
name the field path of every problem: pydantic models for the shape and types of
Unleash's client-API feature JSON (``turnout.flags.definition_models``), then plain
checks here for what depends on more than one field (a strategy's parameters by its
name, a constraint's operand by its operator, the weights of a variant list). The
second pass reads the raw input defensively, so a type error in one strategy does not
hide a bad regular expression in another; it includes ``turnout.flags.portable``, which
refuses what Unleash's official SDKs would read otherwise than turnout does. The result
is a normalised definition: defaults filled in, operands and parameters as strings,
variant weights spread the way the Unleash server spreads them. Whether referenced
segments and parent flags exist is the store's check, not this module's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from turnout.errors import UserError
from turnout.flags.constraints import as_text
from turnout.flags.definition_models import (
    OPERATORS,
    STRATEGY_NAMES,
    Flag,
    Path,
    Segment,
    pydantic_problems,
)
from turnout.flags.portable import constraint_problems, parameter_problems
from turnout.flags.state import FlagState
from turnout.flags.values import rust_trim
from turnout.flags.variants import TOTAL_WEIGHT, normalise_weights


class FlagError(UserError):
    """An invalid flag or segment definition; each problem reads ``field.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# -- messages ----------------------------------------------------------------------


def dotted(path: Path) -> str:
    return ".".join(str(part) for part in path) if path else "(flag)"


# -- checks that span fields -------------------------------------------------------


def _whole_percent(raw: Any) -> str | None:
    """A rollout percentage as Unleash writes it ("0".."100"), or None if it is not one."""
    text = as_text(raw)
    if text is None or isinstance(raw, bool):
        return None
    try:
        number = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or not 0 <= number <= 100:
        return None
    return str(int(number))


def _listed(raw: Any) -> list[str]:
    """The entries of a comma-separated parameter, trimmed as the official SDKs trim them."""
    text = as_text(raw) or ""
    return [entry for entry in (rust_trim(part) for part in text.split(",")) if entry]


def _check_parameters(name: str, params: Mapping[str, Any], path: Path) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    at = (*path, "parameters")
    percent_key = {"flexibleRollout": "rollout", "gradualRolloutUserId": "percentage",
                   "gradualRolloutSessionId": "percentage",
                   "gradualRolloutRandom": "percentage"}.get(name)
    if percent_key is not None:
        if percent_key not in params:
            out.append(((*at, percent_key), f"required by {name}"))
        elif _whole_percent(params[percent_key]) is None:
            out.append(((*at, percent_key), f"expected a whole number 0..100, got {params[percent_key]!r}"))
    if "stickiness" in params and not (as_text(params["stickiness"]) or "").strip():
        out.append(((*at, "stickiness"), "expected a context field name, got an empty value"))
    required = {"userWithId": "userIds", "remoteAddress": "IPs",
                "applicationHostname": "hostNames"}.get(name)
    if required is not None and not _listed(params.get(required)):
        out.append(((*at, required), f"{name} needs a comma-separated list of at least one entry"))
    out.extend(parameter_problems(params, path))
    return out


def check_constraint(raw: Any, path: Path) -> list[tuple[Path, str]]:
    """Operand checks of one constraint, by its operator (see ``turnout.flags.portable``)."""
    if not isinstance(raw, Mapping) or raw.get("operator") not in OPERATORS:
        return []
    return constraint_problems(raw, path)


def _check_variants(raw: Any, path: Path) -> list[tuple[Path, str]]:
    if not isinstance(raw, list) or not all(isinstance(v, Mapping) for v in raw):
        return []
    out: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        name = item.get("name")
        if isinstance(name, str) and name in seen:
            out.append(((*path, i, "name"), f"variant {name!r} is defined twice"))
        seen.add(str(name))
        payload = item.get("payload")
        if isinstance(payload, Mapping) and isinstance(payload.get("value"), str):
            out.extend(_check_payload(payload["type"], payload["value"], (*path, i, "payload", "value")))
    fixed = [v.get("weight") for v in raw if v.get("weightType") == "fix"]
    total = sum(w for w in fixed if isinstance(w, int) and not isinstance(w, bool))
    if total > TOTAL_WEIGHT:
        out.append((path, f"fixed weights add up to {total}, more than {TOTAL_WEIGHT}"))
    elif raw and len(fixed) == len(raw) and total != TOTAL_WEIGHT:
        out.append((path, f"when every variant is fixed their weights must add up to {TOTAL_WEIGHT}, "
                          f"got {total}"))
    return out


def _check_payload(kind: Any, value: str, path: Path) -> list[tuple[Path, str]]:
    if kind == "json":
        try:
            json.loads(value)
        except ValueError as exc:
            return [(path, f"not valid JSON: {exc}")]
    if kind == "number":
        try:
            float(value)
        except ValueError:
            return [(path, f"expected a number, got {value!r}")]
    return []


def _check_strategy(raw: Any, path: Path) -> list[tuple[Path, str]]:
    if not isinstance(raw, Mapping):
        return []
    out: list[tuple[Path, str]] = []
    params = raw.get("parameters") or {}
    if raw.get("name") in STRATEGY_NAMES and isinstance(params, Mapping):
        out.extend(_check_parameters(raw["name"], params, path))
    out.extend(_each(raw.get("constraints"), (*path, "constraints"), check_constraint))
    out.extend(_check_variants(raw.get("variants"), (*path, "variants")))
    return out


def _each(raw: Any, path: Path, check: Any) -> list[tuple[Path, str]]:
    if not isinstance(raw, list):
        return []
    out: list[tuple[Path, str]] = []
    for i, item in enumerate(raw):
        out.extend(check(item, (*path, i)))
    return out


def _check_flag(raw: Mapping[str, Any]) -> list[tuple[Path, str]]:
    out = _each(raw.get("strategies"), ("strategies",), _check_strategy)
    out.extend(_check_variants(raw.get("variants"), ("variants",)))
    deps = raw.get("dependencies")
    if isinstance(deps, list):
        out.extend(((("dependencies", i, "feature")), "a flag cannot depend on itself")
                   for i, dep in enumerate(deps)
                   if isinstance(dep, Mapping) and dep.get("feature") == raw.get("name"))
    return out


# -- the entry points --------------------------------------------------------------


def _raise(problems: list[tuple[Path, str]]) -> None:
    """FlagError listing every problem once, if there are any."""
    lines: list[str] = []
    for path, message in problems:
        line = f"{dotted(path)}: {message}"
        if line not in lines:
            lines.append(line)
    if lines:
        raise FlagError(lines)


def _validated(model: type[BaseModel], data: object,
               semantic: list[tuple[Path, str]]) -> BaseModel:
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        found = pydantic_problems(exc)
        broken = [path for path, _ in found]
        found.extend((p, m) for p, m in semantic
                     if not any(p[: len(b)] == b for b in broken))
        _raise(found)
        raise AssertionError("unreachable") from exc
    _raise(semantic)
    return parsed


def _normalise_strategy(strategy: dict[str, Any], flag: str) -> None:
    params = strategy.setdefault("parameters", {})
    for key in ("rollout", "percentage"):
        if key in params:
            params[key] = _whole_percent(params[key])
    if strategy["name"] == "flexibleRollout":
        params.setdefault("stickiness", "default")
    grouped = ("flexibleRollout", "gradualRolloutUserId", "gradualRolloutSessionId")
    if strategy["name"] in grouped and not params.get("groupId"):
        params["groupId"] = flag  # without one the official SDKs never turn the latter two on
    for key in ("userIds", "IPs", "hostNames"):
        if key in params:
            params[key] = ",".join(_listed(params[key]))
    _normalise_variants(strategy["variants"])


def _normalise_variants(variants: list[dict[str, Any]]) -> None:
    raw: list[Mapping[str, Any]] = list(variants)
    weights = normalise_weights(raw, [v["weight"] for v in variants])
    for variant, weight in zip(variants, weights, strict=True):
        variant["weight"] = weight


def _engine_problems(definition: dict[str, Any]) -> list[tuple[Path, str]]:
    """What the evaluation engine would still refuse (a safety net under the checks above)."""
    ids = {i for s in definition["strategies"] for i in s["segments"]}
    doc = {"features": [definition], "segments": [{"id": i, "constraints": []} for i in ids]}
    feature = FlagState.from_json(doc).features[definition["name"]]
    problems = [s.problem for s in feature.strategies if s.problem is not None]
    if feature.broken is not None:
        problems.append(feature.broken.error_message or "cannot be evaluated")
    return [((), f"the evaluation engine refuses it: {p}") for p in problems]


def validate_flag(data: object) -> dict[str, Any]:
    """The normalised definition of one flag, or FlagError listing every problem."""
    if not isinstance(data, Mapping):
        raise FlagError([f"(flag): expected an object with a name, got {type(data).__name__}"])
    parsed = _validated(Flag, data, _check_flag(data))
    definition = parsed.model_dump(exclude_none=True)
    for strategy in definition["strategies"]:
        _normalise_strategy(strategy, definition["name"])
    _normalise_variants(definition["variants"])
    _raise(_engine_problems(definition))
    return definition


def validate_segment(data: object) -> dict[str, Any]:
    """The normalised definition of one segment (``id`` may be absent: the store picks one)."""
    if not isinstance(data, Mapping):
        raise FlagError([f"(segment): expected an object with a name, got {type(data).__name__}"])
    semantic = _each(data.get("constraints"), ("constraints",), check_constraint)
    return _validated(Segment, data, semantic).model_dump(exclude_none=True)
