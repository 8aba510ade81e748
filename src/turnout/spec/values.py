"""The value notations spec fields share, and the strict model every part of the spec is.

A count of instances or a share of the fleet (`2`, `25%`), a ratio (`1%`, `0.01`), argv and
environment values that YAML read as numbers, and the `kind` shorthand (`router: builtin`).
Each notation is parsed before pydantic validates and carries the JSON Schema of what a
user may write, so `turnout schema` shows the notation rather than the parsed value.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


class Strict(BaseModel):
    """A part of the spec: unknown fields are refused, and a value never changes once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Count(BaseModel):
    """A count of instances or a percentage of the fleet (`2` or `25%`)."""

    model_config = ConfigDict(frozen=True)
    value: float
    percent: bool = False

    def resolve(self, total: int, *, round_up: bool) -> int:
        if not self.percent:
            return int(self.value)
        exact = total * self.value / 100.0
        return int(-(-exact // 1)) if round_up else int(exact // 1)


_COUNT_HELP = "expected a count such as 1 or a percentage such as 25%"


def parse_count(value: object) -> object:
    if isinstance(value, Count | dict):
        return value
    if isinstance(value, bool):
        raise ValueError(_COUNT_HELP)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a count cannot be negative")
        return Count(value=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?%", text):
            number = float(text[:-1])
            if not 0 <= number <= 100:
                raise ValueError("a percentage must be between 0% and 100%")
            return Count(value=number, percent=True)
        if text.isdigit():
            return Count(value=int(text))
    raise ValueError(f"{_COUNT_HELP}, got {value!r}")


CountOrPercent = Annotated[
    Count,
    BeforeValidator(parse_count),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+|\d+(\.\d+)?%)\s*$"},
            ],
            "examples": [1, "25%"],
        },
        mode="validation",
    ),
]


def numbers_as_text(value: object) -> object:
    """YAML reads `8080` and `true` as numbers and booleans; argv and env want text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def kind_shorthand(value: object) -> object:
    """`router: builtin` is short for `router: {kind: builtin}` (so for `platform`)."""
    return {"kind": value} if isinstance(value, str) else value


def kind_schema(description: str) -> WithJsonSchema:
    kind = {"type": "string", "description": description}
    return WithJsonSchema(
        {"anyOf": [kind, {"type": "object", "properties": {"kind": kind},
                          "additionalProperties": False}]},
        mode="validation",
    )


def parse_ratio(value: object) -> object:
    """`1%` or `0.01` -> 0.01."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*%\s*", value):
        return float(value.strip()[:-1].strip()) / 100.0
    return value


Ratio = Annotated[
    float,
    BeforeValidator(parse_ratio),
    Field(ge=0, le=1),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                   {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}],
         "examples": ["1%", 0.01]},
        mode="validation",
    ),
]
