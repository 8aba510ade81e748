"""Result types of flag evaluation, shaped after OpenFeature's resolution details.

Every evaluation answers with a value *and* the reason for it, plus an error code when
the flag was unknown or its definition was malformed. Results are immutable and most
are built once when a state is compiled, so the hot path returns a shared object
instead of allocating one per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Context = Mapping[str, Any]
"""An Unleash context: ``userId``, ``sessionId``, ``remoteAddress``, ``environment``,
``appName``, ``currentTime`` and a ``properties`` mapping of custom fields."""

DISABLED_VARIANT_NAME = "disabled"


class Reason(StrEnum):
    """Why an evaluation produced its value (OpenFeature's reason vocabulary)."""

    STATIC = "STATIC"
    """On for everyone: no strategies, or a strategy without any targeting."""
    TARGETING_MATCH = "TARGETING_MATCH"
    """A strategy's rules (user list, constraints, segments, overrides) matched."""
    SPLIT = "SPLIT"
    """A percentage rollout or weighted variant put the context in its bucket."""
    DISABLED = "DISABLED"
    """The flag is switched off, or a flag it depends on is not as required."""
    DEFAULT = "DEFAULT"
    """No strategy matched (or the flag is unknown): the default, off, applies."""
    ERROR = "ERROR"
    """The flag definition or the input was malformed; the value is off."""


class ErrorCode(StrEnum):
    """What went wrong, when something did (OpenFeature's error codes)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Payload:
    """A variant's payload as Unleash sends it: a type tag and a string value."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of ``evaluate``: is the flag on for this context, and why."""

    name: str
    enabled: bool
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    strategy: int | None = None
    """Index of the strategy that turned the flag on, if one did."""


@dataclass(frozen=True, slots=True)
class VariantResult:
    """The outcome of ``variant``: Unleash's variant plus the reason it was chosen."""

    flag: str
    name: str
    enabled: bool
    feature_enabled: bool
    reason: Reason
    payload: Payload | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None

    def to_unleash(self) -> dict[str, Any]:
        """The variant as Unleash SDKs and the client specification spell it."""
        out: dict[str, Any] = {
            "name": self.name,
            "enabled": self.enabled,
            "feature_enabled": self.feature_enabled,
        }
        if self.payload is not None:
            out["payload"] = {"type": self.payload.type, "value": self.payload.value}
        return out


def not_found(name: str) -> Result:
    """The answer for a flag the state does not hold."""
    return Result(
        name=name,
        enabled=False,
        reason=Reason.DEFAULT,
        error_code=ErrorCode.FLAG_NOT_FOUND,
        error_message=f"flag {name!r} not found",
    )


def failed(name: str, code: ErrorCode, message: str) -> Result:
    """An off result carrying an error."""
    return Result(name=name, enabled=False, reason=Reason.ERROR, error_code=code,
                  error_message=message)


def disabled_variant(result: Result, *, feature_enabled: bool = False) -> VariantResult:
    """Unleash's ``disabled`` variant, carrying the reason and error of ``result``."""
    return VariantResult(
        flag=result.name,
        name=DISABLED_VARIANT_NAME,
        enabled=False,
        feature_enabled=feature_enabled,
        reason=result.reason if not feature_enabled else Reason.DEFAULT,
        error_code=result.error_code,
        error_message=result.error_message,
    )
