"""Where a spec's problems are: the origin of every field path, and pydantic's errors
located at the paths the user wrote.

Reading the file records the line of each path (`turnout.yaml:7`), an override its argument
(`--set instances`); a problem is reported at the origin of the longest recorded prefix of
its path. All the problems found are raised together as one `SpecError`, file lines first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from turnout.errors import SpecError
from turnout.spec import Spec
from turnout.spectext import FieldPath, describe_error, dotted, models_at


@dataclass(frozen=True)
class Origin:
    """Where a value came from: `turnout.yaml:7` or `--set instances` (sorted after the file)."""

    label: str
    order: tuple[int, int] = (0, 0)


class Problems:
    """Problems found so far, each at a field path resolved to the origin of that path."""

    def __init__(self, root: Origin) -> None:
        self.root = root
        self.origins: dict[FieldPath, Origin] = {(): root}
        self.broken: set[FieldPath] = set()
        self._lines: list[tuple[tuple[int, int], str]] = []

    def origin_of(self, path: FieldPath) -> Origin:
        for end in range(len(path), -1, -1):
            found = self.origins.get(path[:end])
            if found is not None:
                return found
        return self.root

    def add(self, path: FieldPath, message: str, origin: Origin | None = None) -> None:
        where = origin or self.origin_of(path)
        field = f" {dotted(path)}:" if path else ""
        line = f"{where.label}:{field} {message}"
        if all(line != existing for _, existing in self._lines):
            self._lines.append((where.order, line))

    def is_broken(self, path: FieldPath) -> bool:
        return any(path[: len(b)] == b for b in self.broken)

    def raise_if_any(self) -> None:
        if self._lines:
            raise SpecError([line for _, line in sorted(self._lines, key=lambda item: item[0])])


# A check from outside the models (say, the wiring's: router kinds and what each can do):
# the problems it finds in a spec that is otherwise valid, each at the field path it is about.
SpecCheck = Callable[[Spec], Iterable[tuple[FieldPath, str]]]


def report_validation(exc: ValidationError, data: dict[str, Any], problems: Problems) -> None:
    """Add each of pydantic's errors to `problems` at the path the user wrote, one line per path
    (an error under a path already found broken is left out)."""
    grouped: dict[FieldPath, list[Any]] = {}
    for raw in exc.errors(include_url=False):
        path, error = _data_path(raw["loc"], data, raw["type"]), raw
        if raw["type"] == "strategy_kind":
            path, error = _kind_error(path, raw)
        if not problems.is_broken(path):
            grouped.setdefault(path, []).append(error)
    for path, errors in grouped.items():
        problems.add(path, describe_error(path, errors))


def _kind_error(path: FieldPath, error: Any) -> tuple[FieldPath, Any]:
    """The strategy union found no kind: say so at `kind` (or that it is not a mapping)."""
    given = error["input"]
    if not isinstance(given, dict):
        return path, {**error, "type": "model_type"}
    return (*path, "kind"), {**error, "type": "literal_error", "input": given.get("kind")}


def _has(data: Any, part: str | int) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


def _data_path(loc: tuple[str | int, ...], data: Any, kind: str) -> FieldPath:
    """Pydantic's location minus union tags: the keys and indexes the user wrote, and last a
    field left out (missing, or a default its model refused)."""
    path: list[str | int] = []
    for i, part in enumerate(loc):
        if _has(data, part):
            data = data[part]
        elif not (i == len(loc) - 1 and (kind == "missing" or _is_field(tuple(path), part))):
            continue
        path.append(part)
    return tuple(path)


def _is_field(path: FieldPath, part: str | int) -> bool:
    return isinstance(part, str) and any(part in m.model_fields for m in models_at(path))
