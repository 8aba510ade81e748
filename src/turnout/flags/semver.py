"""Strict Semantic Versioning 2.0.0 parsing into a sortable key.

The SEMVER_* constraint operators compare versions by precedence: a release sorts
after its pre-releases, pre-release identifiers compare numerically when numeric and
lexically otherwise (numeric ones first), a shorter identifier list sorts first, and
build metadata is ignored. Anything not strictly semver (``v2.0.0``, ``1.2``) is
rejected, as the Unleash client specification requires.
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


def semver_key(text: str) -> SemverKey | None:
    """A tuple that orders like semver precedence, or None when ``text`` is not semver."""
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    idents = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")
    )
    return (int(major), int(minor), int(patch), 0, idents)
