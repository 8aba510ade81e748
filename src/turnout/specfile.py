"""Reading `turnout.yaml`: locations, `--set` overrides, precise errors, schema and display.

The models in `turnout.spec` say what a valid spec is; this module says *where* an
invalid one goes wrong. YAML is composed into nodes (which keep their marks) and
turned into plain data by hand, recording for every field path the line it came
from; `--set KEY=VALUE` overrides record their argument instead. Pydantic's errors
and the checks the models cannot make (placeholders, addresses, timeouts, fields
that only one strategy reads) are then reported together as one `SpecError`, one
line per problem: `turnout.yaml:7: strategy.max_surge: <what is wrong>`.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from turnout.errors import SpecError, UserError
from turnout.spec import STRATEGIES, Health, Spec, fields_read, split_address
from turnout.spectext import (
    FieldPath,
    describe_error,
    dotted,
    format_duration,
    models_at,
    plain_spec,
    show,
)
from turnout.units import parse_duration

SPEC_NAME = "turnout.yaml"
PLACEHOLDERS = ("port", "version", "slot")

__all__ = [
    "PLACEHOLDERS",
    "SPEC_NAME",
    "Override",
    "apply_overrides",
    "dump_spec",
    "find_spec",
    "format_duration",
    "kind_override",
    "load_spec",
    "parse_spec",
    "spec_json_schema",
    "with_kind",
]


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


# -- finding and reading ------------------------------------------------------------


def find_spec(start: Path | None = None, explicit: str | None = None) -> Path:
    """`-f FILE` if given, else `turnout.yaml` in `start` (the current directory)."""
    here = start is None or start.resolve() == Path.cwd().resolve()
    base = Path() if start is None or here else start
    if explicit:
        path = Path(explicit) if Path(explicit).is_absolute() or here else base / explicit
        if not path.is_file():
            what = "is a directory, not a spec file" if path.is_dir() else "no such spec file"
            raise UserError(f"{explicit}: {what}")
        return path
    path = base / SPEC_NAME if not here else Path(SPEC_NAME)
    if not path.is_file():
        place = "the current directory" if here else str(base)
        raise UserError(
            f"no {SPEC_NAME} in {place}; pass -f FILE (`turnout schema` lists the fields)"
        )
    return path


# A check from outside the models (say, the wiring's: router kinds and what each can do):
# the problems it finds in a spec that is otherwise valid, each at the field path it is about.
SpecCheck = Callable[[Spec], Iterable[tuple[FieldPath, str]]]


def load_spec(path: Path, overrides: Sequence[str] = (), *,
              checks: Sequence[SpecCheck] = ()) -> Spec:
    """Read, override and validate a spec file; every problem in it raises one SpecError."""
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SpecError([f"{name}: file not found"]) from None
    except IsADirectoryError:
        raise SpecError([f"{name}: is a directory, not a spec file"]) from None
    except PermissionError:
        raise SpecError([f"{name}: cannot be read: permission denied"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{name}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    except OSError as exc:
        raise SpecError([f"{name}: cannot be read: {exc.strerror or exc}"]) from None
    return parse_spec(text, name, overrides, checks=checks)


def parse_spec(text: str, name: str = SPEC_NAME, overrides: Sequence[str] = (), *,
               checks: Sequence[SpecCheck] = ()) -> Spec:
    """Like `load_spec` for text already in hand; `name` labels the problems."""
    problems = Problems(Origin(f"{name}:1", (0, 1)))
    data = _read_yaml(text, name, problems)
    data = _apply(data, overrides, problems)
    _check_semantics(data, problems)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        _report_validation(exc, data, problems)
        problems.raise_if_any()
        raise SpecError([f"{name}: {exc}"]) from None  # every error above became a problem
    problems.raise_if_any()
    for check in checks:
        for path, message in check(spec):
            problems.add(path, message)
    problems.raise_if_any()
    return spec


# -- YAML with line numbers ---------------------------------------------------------


def _read_yaml(text: str, name: str, problems: Problems) -> dict[str, Any]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        hint = " (YAML indents with spaces, not tabs)" if "\\t" in str(exc.problem) else ""
        raise SpecError([f"{where}: invalid YAML: {exc.problem or exc.context}{hint}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{name}: invalid YAML: {exc}"]) from None
    if root is None:
        raise SpecError(
            [f"{name}: the file is empty; a spec needs at least service and run.command"]
        )
    reader = _NodeReader(name, problems)
    problems.root = problems.origins[()] = reader.origin(root)
    data = reader.build(root, (), 0)
    if not isinstance(data, dict):
        raise SpecError(
            [
                f"{problems.root.label}: the top level must be a mapping of fields such as "
                f"`service:` and `run:`, got {show(data)}"
            ]
        )
    return data


class _NodeReader:
    """Turns composed YAML nodes into plain data, noting each path's line and duplicate keys."""

    def __init__(self, name: str, problems: Problems) -> None:
        self.name = name
        self.problems = problems
        self.constructor = yaml.SafeLoader("")
        self.open: set[int] = set()  # collections being built: an alias back to one is a cycle

    def origin(self, node: yaml.Node) -> Origin:
        line = node.start_mark.line + 1
        return Origin(f"{self.name}:{line}", (0, line))

    def build(self, node: yaml.Node, path: FieldPath, depth: int) -> Any:
        self.problems.origins.setdefault(path, self.origin(node))
        if id(node) in self.open or depth > 50:
            self.problems.add(path, "refers to itself through a YAML alias or is nested too deeply")
            self.problems.broken.add(path)
            return None
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path, depth)
                items = enumerate(node.value)
                return [self.build(item, (*path, i), depth + 1) for i, item in items]
            finally:
                self.open.discard(id(node))
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.problems.add(path, f"invalid value: {problem}", self.origin(node))
            self.problems.broken.add(path)
            return None

    def _mapping(self, node: yaml.MappingNode, path: FieldPath, depth: int) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self._scalar(key_node, (*path, "?"))
            line = key_node.start_mark.line + 1
            if key in seen:
                self.problems.add(
                    (*path, key),
                    f"duplicate key; it is already set on line {seen[key]}",
                    self.origin(key_node),
                )
            seen.setdefault(key, line)
        try:
            self.constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.problems.add(path, f"invalid merge: {getattr(exc, 'problem', exc)}")
            self.problems.broken.add(path)
            return {}
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.add(path, "keys must be plain names", self.origin(key_node))
                self.problems.broken.add(path)
                continue
            key = self._scalar(key_node, (*path, "?"))
            self.problems.origins[(*path, key)] = self.origin(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result


# -- --set KEY=VALUE and --strategy KIND --------------------------------------------


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
        _report_validation(exc, data, problems)
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
    result = _apply(data, overrides, problems)
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


def _apply(data: Mapping[str, Any], overrides: Sequence[str], problems: Problems) -> dict[str, Any]:
    result = copy.deepcopy(dict(data))
    kind_before = _get(result, "strategy", "kind") or "rolling"
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
    if kind_origin is not None and (_get(result, "strategy", "kind") or "rolling") != kind_before:
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


# -- checks the models cannot make --------------------------------------------------


def _get(data: Any, *path: str) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _check_semantics(data: dict[str, Any], problems: Problems) -> None:
    _check_placeholders(data, problems)
    _check_addresses(data, problems)
    _check_health(data, problems)
    _check_strategy(data, problems)


def _check_placeholders(data: dict[str, Any], problems: Problems) -> None:
    run = _get(data, "run")
    places: list[tuple[FieldPath, Any]] = [(("run", "cwd"), _get(run, "cwd"))]
    command = _get(run, "command")
    if isinstance(command, list):
        places += [(("run", "command", i), arg) for i, arg in enumerate(command)]
    env = _get(run, "env")
    if isinstance(env, dict):
        places += [(("run", "env", name), value) for name, value in env.items()]
    for path, text in places:
        if not isinstance(text, str):
            continue
        for name in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
            if name not in PLACEHOLDERS:
                close = difflib.get_close_matches(name.lower(), PLACEHOLDERS, n=1)
                hint = f"; did you mean {{{close[0]}}}?" if close else ""
                known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                problems.add(
                    path, f"unknown placeholder {{{name}}}: only {known} are filled in{hint}"
                )


def _check_addresses(data: dict[str, Any], problems: Problems) -> None:
    listen, preview = _get(data, "listen"), _get(data, "routing", "preview_listen")
    if not isinstance(preview, str):
        return
    path = ("routing", "preview_listen")
    try:
        preview_host, preview_port = split_address(preview)
    except ValueError as exc:
        problems.add(path, str(exc))
        return
    try:
        host, port = split_address(listen if isinstance(listen, str) else "127.0.0.1:8080")
    except ValueError:
        return
    wildcard = {"", "0.0.0.0", "::", "[::]", "*"}
    if port == preview_port and (host == preview_host or {host, preview_host} & wildcard):
        problems.add(path, f"must differ from listen ({listen or '127.0.0.1:8080'})")


def _duration_or(value: Any, default: float) -> float | None:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _check_health(data: dict[str, Any], problems: Problems) -> None:
    health = _get(data, "health")
    fields = Health.model_fields
    timeout = _duration_or(_get(health, "timeout"), fields["timeout"].default)
    deadline = _duration_or(_get(health, "deadline"), fields["deadline"].default)
    if timeout is None or deadline is None or timeout <= deadline:
        return
    if _get(health, "timeout") is not None:
        message = f"{format_duration(timeout)} is longer than health.deadline"
        problems.add(("health", "timeout"), f"{message} ({format_duration(deadline)})")
    else:
        message = f"{format_duration(deadline)} is shorter than health.timeout"
        problems.add(("health", "deadline"), f"{message} ({format_duration(timeout)}, the default)")


def _check_strategy(data: dict[str, Any], problems: Problems) -> None:
    # Which kind reads which field is the models' rule (`turnout.spec`); a user listed twice
    # is found here, where the path of the second listing is known.
    _check_users(_get(data, "strategy", "match"), problems)


def _check_users(match: Any, problems: Problems) -> None:
    if not isinstance(match, list):
        return
    first: dict[str, FieldPath] = {}
    for i, rule in enumerate(match):
        users = _get(rule, "users")
        for j, user in enumerate(users if isinstance(users, list) else []):
            path: FieldPath = ("strategy", "match", i, "users", j)
            if not isinstance(user, str):
                continue
            if user in first:
                problems.add(path, f"user {user!r} is already listed at {dotted(first[user])}")
            first.setdefault(user, path)


# -- pydantic's errors, located -----------------------------------------------------


def _report_validation(exc: ValidationError, data: dict[str, Any], problems: Problems) -> None:
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


# -- schema and display -------------------------------------------------------------


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of turnout.yaml, with the description of every field."""
    schema = Spec.model_json_schema(mode="validation")
    step = schema["$defs"]["CanaryStep"]
    schema["$defs"]["CanaryStep"] = {  # `- pause` alone is a step too
        "description": step.pop("description"),
        "anyOf": [step, {"const": "pause", "description": "wait for `turnout promote`"}],
    }
    _strategy_schema(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": SPEC_NAME}


def _strategy_schema(schema: dict[str, Any]) -> None:
    """One `Strategy` definition: `kind` names the model the other fields follow (rolling
    when it is left out, so every other kind requires it)."""
    kinds: list[dict[str, str]] = []
    for kind, model in STRATEGIES.items():
        definition = schema["$defs"][model.__name__]
        if kind != "rolling":
            definition["required"] = ["kind", *definition.get("required", [])]
        kinds.append({"$ref": f"#/$defs/{model.__name__}"})
    schema["$defs"]["Strategy"] = {
        "description": "How a new version replaces the stable one; each kind has its own fields.",
        "type": "object",
        "properties": {"kind": {"enum": list(STRATEGIES), "default": "rolling",
                                "description": "the strategy; it says which fields follow"}},
        "oneOf": kinds,
    }
    schema["properties"]["strategy"] = {"$ref": "#/$defs/Strategy"}


def dump_spec(spec: Spec, *, defaults: bool = True) -> str:
    """The spec as YAML that `load_spec` reads back; `defaults=False` keeps only what differs."""
    return yaml.safe_dump(
        plain_spec(spec, defaults=defaults), sort_keys=False, allow_unicode=True, width=100
    )
