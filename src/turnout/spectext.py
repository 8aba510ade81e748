"""The spec as text for people: error messages, field suggestions, durations, YAML display.

`turnout.specfile` locates a problem (file, line, field path); this module words it,
suggests the field the user probably meant, and renders a `Spec` back into the
notation of turnout.yaml (`30s`, `25%`) so that what `turnout status` shows can be
pasted into a spec file again.
"""

from __future__ import annotations

import difflib
import re
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from turnout.spec import STRATEGIES, Count, FeatureToggle, Spec, owners
from turnout.units import parse_duration

FieldPath = tuple[str | int, ...]


def dotted(path: FieldPath) -> str:
    return ".".join(str(part) for part in path)


# -- messages -----------------------------------------------------------------------

_PLAIN_MESSAGES = {
    "dict_type": "expected a mapping of fields",
    "model_type": "expected a mapping of fields",
    "model_attributes_type": "expected a mapping of fields",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
}
_LIMITS = {
    "greater_than_equal": ("ge", "must be at least"),
    "greater_than": ("gt", "must be more than"),
    "less_than_equal": ("le", "must be at most"),
    "less_than": ("lt", "must be less than"),
}


def show(value: Any) -> str:
    """A value as the user would have written it, for `got ...`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value) if isinstance(value, str) else str(value)


def describe_error(path: FieldPath, errors: list[Any]) -> str:
    """One message for the pydantic errors at one path (a union gives one per branch)."""
    error = next((e for e in errors if e["type"] == "value_error"), errors[0])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_field(path, tuple(error["loc"]))
    if kind == "missing":
        return "required field is missing"
    message = _message(path, kind, value, ctx, str(error["msg"]))
    scalar = not isinstance(value, dict | list) or kind in _PLAIN_MESSAGES
    about_value = kind != "value_error" or ":" not in message  # not a cross-field rule
    if scalar and about_value and ", got " not in message:
        message += f", got {show(value)}"
    if kind == "literal_error" and isinstance(value, str):
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
        message += f"; did you mean {close[0]!r}?" if close else ""
    return message


def _message(path: FieldPath, kind: str, value: Any, ctx: dict[str, Any], default: str) -> str:
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", default))
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}"
    if kind == "list_type" and path == ("run", "command"):
        got = f", got {show(value)}" if isinstance(value, str) else ""
        return f"expected a list of arguments such as [python3, app.py]{got}; no shell is used"
    if kind in _PLAIN_MESSAGES:
        return _PLAIN_MESSAGES[kind]
    if kind == "string_pattern_mismatch" and path == ("service",):
        return (
            "expected a name of lowercase letters, digits, '.', '_' and '-' "
            "that starts with a letter or digit (at most 63 characters)"
        )
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"needs at least {least} items"
    if kind == "too_long":
        return f"has more than {ctx.get('max_length')} items"
    if kind in _LIMITS:
        bound, words = _LIMITS[kind]
        return f"{words} {ctx.get(bound)}"
    return default


def _unknown_field(path: FieldPath, loc: tuple[str | int, ...]) -> str:
    """An unknown field; in a strategy, one that another kind reads says which kind."""
    kind = _strategy_kind(path, loc)
    name = str(path[-1])
    if kind is not None and path[:-1] == ("strategy",) and owners(name):
        return f"only a {owners(name)} strategy uses {name}; this one is {kind!r}"
    return "unknown field" + _field_hint(path, kind)


def _strategy_kind(path: FieldPath, loc: tuple[str | int, ...]) -> str | None:
    """The kind whose model reported an error under `strategy` (pydantic's loc names it)."""
    if path[:1] == ("strategy",) and len(loc) > 1 and loc[0] == "strategy" and loc[1] in STRATEGIES:
        return str(loc[1])
    return None


def _field_hint(path: FieldPath, kind: str | None = None) -> str:
    name = str(path[-1])
    models = [STRATEGIES[kind]] if kind and path[:-1] == ("strategy",) else models_at(path[:-1])
    known = sorted({f for model in models for f in model.model_fields})
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    elsewhere = [p for p in _field_index().get(name, []) if p != dotted(path[:-1])]
    if elsewhere:
        return f"; it belongs under {' or '.join(repr(p) for p in elsewhere[:2])}"
    return f"; known fields here: {', '.join(known)}" if known else ""


def _expand(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _expand(get_args(tp)[0])
    if origin in (Union, UnionType):
        return [inner for arg in get_args(tp) for inner in _expand(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel)


def models_at(path: FieldPath) -> list[type[BaseModel]]:
    """The models that may sit at a path of the spec (several where a union allows)."""
    types: list[Any] = [Spec]
    for part in path:
        following: list[Any] = []
        for tp in (inner for t in types for inner in _expand(t)):
            origin = get_origin(tp)
            if _is_model(tp) and isinstance(part, str) and part in tp.model_fields:
                following.append(tp.model_fields[part].annotation)
            elif origin is list and isinstance(part, int):
                following.append(get_args(tp)[0])
            elif origin is dict and isinstance(part, str):
                following.append(get_args(tp)[1])
        types = following
    return [t for tp in types for t in _expand(tp) if _is_model(t) and t is not Count]


def _field_index() -> dict[str, list[str]]:
    """Every field name of the spec -> the dotted paths of the models that have it."""
    index: dict[str, list[str]] = {}
    pending: list[tuple[str, type[BaseModel]]] = [("", Spec)]
    while pending:
        where, model = pending.pop(0)
        for name, info in model.model_fields.items():
            places = index.setdefault(name, [])
            if (where or "the top level") not in places:  # the strategy kinds share fields
                places.append(where or "the top level")
            for outer in _expand(info.annotation):
                inner = get_args(outer)[0] if get_origin(outer) is list else outer
                for candidate in _expand(inner):
                    if _is_model(candidate) and candidate is not Count:
                        pending.append((f"{where}.{name}".lstrip("."), candidate))
    return index


# -- display ------------------------------------------------------------------------

_UNIT_SECONDS = (("h", 3600.0), ("m", 60.0), ("s", 1.0))


def format_duration(seconds: float) -> str:
    """Seconds as a spec writes them (`1h`, `5m`, `30s`, `500ms`, `1.5s`); exact where it can be."""
    if seconds == 0:
        return "0s"
    whole = [f"{int(seconds // size)}{unit}" for unit, size in _UNIT_SECONDS if seconds % size == 0]
    short = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    millis = f"{round(seconds * 1000)}ms"
    readable = [*whole[:1], millis if seconds < 1 else short, millis, f"{seconds!r}s"]
    for text in readable:
        try:
            if parse_duration(text) == seconds:
                return text
        except ValueError:  # repr() chose an exponent
            continue
    return millis if seconds < 1 else short


def _duration_value(seconds: float) -> str | float:
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else seconds


def _mentions_duration(obj: Any) -> bool:
    if isinstance(obj, BeforeValidator):
        return obj.func is parse_duration
    return any(_mentions_duration(arg) for arg in get_args(obj))


def _is_duration(info: FieldInfo) -> bool:
    return any(_mentions_duration(m) for m in info.metadata) or _mentions_duration(info.annotation)


def plain_spec(model: BaseModel, *, defaults: bool = True) -> dict[str, Any]:
    """A model as plain data in the spec's own notation (durations, counts, percentages);
    a strategy's `kind` first, and of a feature toggle only the fields its `ship` reads."""
    out: dict[str, Any] = {}
    fields = type(model).model_fields
    names = model.fields_in_use() if isinstance(model, FeatureToggle) else list(fields)
    strategy = type(model) in STRATEGIES.values()
    if strategy:  # the kind says which fields follow, so it leads and is always written
        names = ["kind", *(n for n in names if n != "kind")]
    for name in names:
        info = fields[name]
        value = getattr(model, name)
        required = info.is_required() or (strategy and name == "kind")
        default = None if required else info.get_default(call_default_factory=True)
        if (value is None and default is None and not required) or (
            not defaults and not required and value == default
        ):
            continue
        out[name] = _plain(value, _is_duration(info), defaults)
    return out


def _plain(value: Any, duration: bool, defaults: bool) -> Any:
    if isinstance(value, Count):
        return f"{value.value:g}%" if value.percent else int(value.value)
    if isinstance(value, BaseModel):
        return plain_spec(value, defaults=defaults)
    if isinstance(value, list):
        return [_plain(item, duration, defaults) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item, duration, defaults) for key, item in value.items()}
    if duration and isinstance(value, float):
        return _duration_value(value)
    return value
