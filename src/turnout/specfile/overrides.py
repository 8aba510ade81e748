"""Overrides: `--set KEY=VALUE` on the spec's data, and `--strategy KIND`.

An override is recorded as the origin of the path it sets, so a problem with its value is
reported at `--set KEY` (or `--strategy KIND`) rather than at a line of the file. Changing
the strategy's kind keeps the fields the new kind reads and drops the others.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from turnout.errors import SpecError
from turnout.spec import STRATEGIES, Spec, fields_read
from turnout.specfile.checks import value_at
from turnout.specfile.problems import Origin, Problems, SpecCheck, report_validation
from turnout.spectext import FieldPath, dotted, show


def with_kind(spec: Spec, kind: str, *, checks: Sequence[SpecCheck] = ()) -> Spec:
    """`spec` deployed with strategy `kind` (`--strategy KIND`): the fields of its strategy
    that KIND reads are kept, the others dropped; what KIND needs and lacks raises SpecError
    (as do the problems `checks` find in the new spec)."""
    if kind == spec.strategy.kind:
        return spec
    if kind not in STRATEGIES:
        raise SpecError([f"--strategy: expected one of {', '.join(STRATEGIES)}, got {kind!r}"])
    old = spec.strategy
    read = fields_read(kind, getattr(old, "ship", None)) - {"kind"}
    strategy = {"kind": kind} | {n: getattr(old, n) for n in old.model_fields_set & read}
    data = {name: getattr(spec, name) for name in type(spec).model_fields} | {"strategy": strategy}
    problems = Problems(Origin(f"--strategy {kind}"))
    try:
        changed = Spec.model_validate(data)
    except ValidationError as exc:
        report_validation(exc, data, problems)
        problems.raise_if_any()
        raise SpecError([f"--strategy {kind}: {exc}"]) from None
    for check in checks:
        for path, message in check(changed):
            problems.add(path, message)
    problems.raise_if_any()
    return changed


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `KEY=VALUE` applied; a bad one raises SpecError."""
    problems = Problems(Origin("--set"))
    result = overridden(data, overrides, problems)
    problems.raise_if_any()
    return result


class Override(str):
    """A `KEY=VALUE` override that says where it came from in problems: `--strategy canary`
    is `Override("strategy.kind=canary", label="--strategy canary")`; a plain str is `--set`."""

    label: str | None

    def __new__(cls, text: str, *, label: str | None = None) -> Override:
        made = super().__new__(cls, text)
        made.label = label
        return made


def kind_override(kind: str) -> Override:
    """`--strategy KIND`: put before the `--set` overrides, so that they may add fields KIND reads."""
    return Override(f"strategy.kind={kind}", label=f"--strategy {kind}")


def overridden(data: Mapping[str, Any], overrides: Sequence[str], problems: Problems) -> dict[str, Any]:
    """A copy of `data` with each override applied in turn, each recorded as the origin of
    the path it sets; a bad one is added to `problems` and skipped."""
    result = copy.deepcopy(dict(data))
    kind_before = value_at(result, "strategy", "kind") or "rolling"
    given: set[str] = set()  # strategy fields named by an override
    kind_origin = None
    for index, text in enumerate(overrides):
        key = text.partition("=")[0].strip()
        origin = Origin(getattr(text, "label", None) or f"--set {key or text}", (1, index))
        parsed = _parse_override(text, origin, problems)
        if parsed is None:
            continue
        parts, value = parsed
        error = _assign(result, parts, value, origin, problems)
        if error:
            problems.add((), error, origin)
        elif parts[0] == "strategy" and len(parts) > 1:
            given.add(parts[1])
            kind_origin = origin if parts == ["strategy", "kind"] else kind_origin
    if kind_origin is not None and (value_at(result, "strategy", "kind") or "rolling") != kind_before:
        _keep_what_the_kind_reads(result, given)
        problems.origins[("strategy",)] = kind_origin  # what the new kind lacks is its doing
    return result


def _parse_override(text: str, origin: Origin, problems: Problems) -> tuple[list[str], Any] | None:
    """The key's parts and the YAML value of `KEY=VALUE`, or None with the problem added."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        problems.add((), "expected KEY=VALUE such as instances=3", origin)
        return None
    parts = key.split(".")
    if any(not part.strip() for part in parts):
        problems.add((), f"KEY {key!r} has an empty part; write it like run.env.NAME", origin)
        return None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        problems.add((), f"VALUE {raw!r} is not valid YAML: {problem} (quote it)", origin)
        return None
    return [p.strip() for p in parts], value


def _keep_what_the_kind_reads(data: dict[str, Any], given: set[str]) -> None:
    """After the kind changed (`--strategy KIND`, `--set strategy.kind=KIND`): drop the
    strategy's fields from the file that KIND does not read (those an override gave stay,
    and are refused if KIND does not read them)."""
    strategy = data.get("strategy")
    if not isinstance(strategy, dict) or strategy.get("kind") not in STRATEGIES:
        return
    read = fields_read(strategy["kind"], strategy.get("ship"))
    for name in [n for n in strategy if n not in read and n not in given]:
        del strategy[name]


def _assign(
    root: dict[str, Any], parts: list[str], value: Any, origin: Origin, problems: Problems
) -> str | None:
    node: Any = root
    path: FieldPath = ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        step: str | int = part
        if isinstance(node, list):
            if not re.fullmatch(r"-?\d+", part):
                return f"{dotted(path)} is a list; {part!r} is not an index such as 0"
            step = int(part) + (len(node) if int(part) < 0 else 0)
            if not 0 <= step <= len(node):
                return f"index {part} is out of range: {dotted(path)} has {len(node)} items"
            if step == len(node):
                node.append(None)
        elif not isinstance(node, dict):
            return f"{dotted(path)} is {show(node)}, so it has no field {part!r}"
        path = (*path, step)
        current = node.get(step) if isinstance(node, dict) else node[step]
        if last:
            node[step] = value
        elif current is None:
            node[step] = {}
            problems.origins[path] = origin
        node = node[step]
    for known in [p for p in problems.origins if p[: len(path)] == path]:
        del problems.origins[known]
    problems.origins[path] = origin
    problems.broken = {b for b in problems.broken if b[: len(path)] != path}
    return None
