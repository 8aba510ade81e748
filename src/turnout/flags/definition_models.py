"""The shape of a flag or segment definition: pydantic models of Unleash's feature JSON.

The first of ``turnout.flags.definition``'s two passes: field names, types, enumerations
(strategy names, constraint operators), bounds and defaults, with ``extra="forbid"`` so a
misspelt field is named rather than ignored. Numbers given where Unleash writes strings
(operands, parameters) become their text. ``pydantic_problems`` turns pydantic's errors
into ``(field path, message)`` pairs in turnout's words.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from turnout.flags.variants import TOTAL_WEIGHT

FLAG_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
STRATEGY_NAMES = ("default", "flexibleRollout", "gradualRolloutUserId", "gradualRolloutSessionId",
                  "gradualRolloutRandom", "userWithId", "remoteAddress", "applicationHostname")
LIST_OPERATORS = ("IN", "NOT_IN", "STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH", "IN_CIDR")
VALUE_OPERATORS = ("NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT", "NUM_LTE", "DATE_AFTER", "DATE_BEFORE",
                   "SEMVER_EQ", "SEMVER_GT", "SEMVER_GTE", "SEMVER_LT", "SEMVER_LTE", "REGEX")
OPERATORS = LIST_OPERATORS + VALUE_OPERATORS
Path = tuple[str | int, ...]


def _text(value: Any) -> Any:
    """Numbers become their text (Unleash operands and parameters are strings)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_text)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
FlagName = Annotated[str, Field(pattern=FLAG_NAME_PATTERN)]
Operator = Literal[OPERATORS]  # type: ignore[valid-type]
StrategyName = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constraint(_Model):
    contextName: Name
    operator: Operator
    value: Text | None = None
    values: list[Text] | None = None
    inverted: StrictBool = False
    caseInsensitive: StrictBool = False


class Override(_Model):
    contextName: Name
    values: list[Text] = Field(min_length=1)


class Payload(_Model):
    type: Literal["string", "json", "csv", "number"]
    value: str


class Variant(_Model):
    name: Name
    weight: int = Field(0, ge=0, le=TOTAL_WEIGHT)
    weightType: Literal["variable", "fix"] = "variable"
    stickiness: Name | None = None  # unset: a strategy variant inherits its strategy's
    payload: Payload | None = None
    overrides: list[Override] = []


class Strategy(_Model):
    name: StrategyName
    parameters: dict[str, Text] = {}
    constraints: list[Constraint] = []
    segments: list[int] = []
    variants: list[Variant] = []
    id: str | None = None
    title: str | None = None
    sortOrder: int | None = None


class Dependency(_Model):
    feature: FlagName
    enabled: StrictBool = True
    variants: list[Name] = []


class Flag(_Model):
    name: FlagName
    type: Literal["release", "experiment", "operational", "kill-switch", "permission"] = "release"
    description: str = ""
    enabled: StrictBool = False
    stale: StrictBool = False
    impressionData: StrictBool = False
    project: Name = "default"
    strategies: list[Strategy] = []
    variants: list[Variant] = []
    dependencies: list[Dependency] = []


class Segment(_Model):
    id: int | None = Field(None, ge=1)
    name: Name
    description: str = ""
    constraints: list[Constraint] = []


def pydantic_problems(exc: ValidationError) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for err in exc.errors():
        path: Path = tuple(err["loc"])
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "missing":
            message = "required"
        elif kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "string_pattern_mismatch":
            message = f"expected 1 to 100 letters, digits, '_', '.' or '-', got {err['input']!r}"
        elif kind == "literal_error":
            message = f"expected {ctx.get('expected')}, got {err['input']!r}"
        else:
            message = err["msg"].replace("Input should be", "expected")
            message = message.replace("Value error, ", "")
        out.append((path, message))
    return out
