"""Strict Semantic Versioning 2.0.0 parsing into a sortable key.

The SEMVER_* constraint operators compare versions by precedence: a release sorts
after its pre-releases, pre-release identifiers compare numerically when numeric and
lexically otherwise (numeric ones first), a shorter identifier list sorts first, and
build metadata is ignored. Anything not strictly semver (``v2.0.0``, ``1.2``, spaces) is
rejected, as the Unleash client specification requires, and so is a major, minor or
patch number above 2**64 - 1: the official engine (Rust's ``semver`` crate) reads them as
unsigned 64-bit numbers. ``semver_operand`` reads a SEMVER_* constraint's operand as that
engine's rule grammar does (spaces and tabs around it are skipped).
"""

from __future__ import annotations

import re

_IDENT = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?",
    re.ASCII,
)

SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]
U64_MAX = 2**64 - 1


def semver_key(text: str) -> SemverKey | None:
    """A tuple that orders like semver precedence, or None when ``text`` is not semver."""
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if max(int(major), int(minor), int(patch)) > U64_MAX:
        return None
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    idents = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")
    )
    return (int(major), int(minor), int(patch), 0, idents)


def semver_operand(text: str) -> SemverKey | None:
    """A SEMVER_* operand: the grammar's ``semver`` token, then the crate's rules."""
    return semver_key(text.strip(" \t"))
