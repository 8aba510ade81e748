"""What the flag store hands back and raises: frozen records of flags, audit entries and tokens.

They are plain values, detached from any connection, so the CLI, the admin API and the
engine can keep and compare them; the errors are the store's own kinds of `UserError`
and `ConflictError`, so each maps to its exit code and HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from turnout.errors import ConflictError, UserError

TokenKind = Literal["client", "admin"]


class FlagNotFound(UserError):
    """No flag of that name (or it is archived)."""


class FlagExists(ConflictError):
    """A flag of that name already exists; nothing was changed (exit 2, like bad input)."""

    exit_code = 2


class VersionConflict(ConflictError):
    """The flag changed since the version the caller read."""


@dataclass(frozen=True)
class FlagRecord:
    name: str
    definition: dict[str, Any]
    version: int
    archived: bool
    updated_at: float


@dataclass(frozen=True)
class AuditRecord:
    flag: str
    version: int
    at: float
    who: str
    action: str
    change: dict[str, Any]


@dataclass(frozen=True)
class Token:
    name: str
    kind: TokenKind


@dataclass(frozen=True)
class TokenRecord:
    """A token as `turnout flags token list` shows it."""

    name: str
    kind: str
    created_at: float
    revoked_at: float | None
