"""Reading `turnout.yaml`: locations, `--set` overrides, precise errors, schema and display.

The models in `turnout.spec` say what a valid spec is; this package says *where* an
invalid one goes wrong. YAML is composed into nodes (which keep their marks) and
turned into plain data by hand, recording for every field path the line it came
from; `--set KEY=VALUE` overrides record their argument instead. Pydantic's errors
and the checks the models cannot make (placeholders, addresses, timeouts, fields
that only one strategy reads) are then reported together as one `SpecError`, one
line per problem: `turnout.yaml:7: strategy.max_surge: <what is wrong>`.

This module finds, loads and parses a spec and gives its schema and YAML; the steps of
reading live beside it, in the order `parse_spec` takes them:

- `yamlnodes`: YAML into plain data, with the line of every field path;
- `overrides`: `--set KEY=VALUE` and `--strategy KIND`;
- `checks`: what the models cannot check (placeholders, addresses, health timeouts);
- `problems`: the origin of each path, pydantic's errors located, one `SpecError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from turnout.errors import SpecError, UserError
from turnout.spec import STRATEGIES, Spec
from turnout.spec.hosts import SshPlatformSpec
from turnout.spec.routing import RouterChoice
from turnout.spec.run import PlatformChoice
from turnout.specfile.checks import PLACEHOLDERS, check_semantics
from turnout.specfile.overrides import (
    Override,
    apply_overrides,
    kind_override,
    overridden,
    with_kind,
)
from turnout.specfile.problems import Origin, Problems, SpecCheck, report_validation
from turnout.specfile.yamlnodes import read_yaml
from turnout.spectext import format_duration, plain_spec

SPEC_NAME = "turnout.yaml"

__all__ = [
    "PLACEHOLDERS",
    "SPEC_NAME",
    "Override",
    "SpecCheck",
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
    data = read_yaml(text, name, problems)
    data = overridden(data, overrides, problems)
    check_semantics(data, problems)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        report_validation(exc, data, problems)
        problems.raise_if_any()
        raise SpecError([f"{name}: {exc}"]) from None  # every error above became a problem
    problems.raise_if_any()
    for check in checks:
        for path, message in check(spec):
            problems.add(path, message)
    problems.raise_if_any()
    return spec


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
    _object_forms(schema, "router", [RouterChoice])
    _object_forms(schema, "platform", [PlatformChoice, SshPlatformSpec])
    metrics = schema["properties"]["metrics"]  # `metrics: router` is short for {kind: router}
    metrics["anyOf"] = [{"const": "router", "description": "the router's own counters"},
                        {"oneOf": metrics.pop("oneOf")}]
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


def _object_forms(schema: dict[str, Any], field: str, models: Sequence[type[BaseModel]]) -> None:
    """`field` is a kind's name alone or an object with that kind's fields (`models`): the
    field's own schema names only `kind`, so each model's is put in with its fields."""
    forms = [schema["properties"][field]["anyOf"][0]]  # the name alone
    for model in models:
        own = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        schema["$defs"].update(own.pop("$defs", {}))
        schema["$defs"][model.__name__] = own
        forms.append({"$ref": f"#/$defs/{model.__name__}"})
    schema["properties"][field]["anyOf"] = forms


def dump_spec(spec: Spec, *, defaults: bool = True) -> str:
    """The spec as YAML that `load_spec` reads back; `defaults=False` keeps only what differs."""
    return yaml.safe_dump(
        plain_spec(spec, defaults=defaults), sort_keys=False, allow_unicode=True, width=100
    )
