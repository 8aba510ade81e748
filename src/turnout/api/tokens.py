"""API tokens on the request path: a dict lookup of sha256(secret), refreshed from the store.

The store keeps only hashes and answers `check_token(secret)`. Asking it on every
request would put a database query on the hot path, so answers (including "unknown")
are cached by the secret's SHA-256 for a few seconds; a request whose entry is missing
or stale goes through the store once, off the event loop, and refreshes it. The cache
is emptied whenever the flag revision changes too, and is bounded so that a client
spraying random secrets cannot grow it without limit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["client", "admin"]
TTL_S = 5.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token's name (the audit's `who`) and its kind."""

    name: str
    kind: Kind


def secret_of(header: str | None) -> str | None:
    """The secret of an Authorization header: the raw token, or `Bearer <token>`."""
    if header is None:
        return None
    value = header.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None


class TokenCache:
    """Secret → `Caller | None`, cached (see the module docstring)."""

    def __init__(self, check: Callable[[str], Awaitable[Caller | None]], *,
                 ttl: float = TTL_S, now: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._ttl = ttl
        self._now = now
        self._entries: dict[bytes, tuple[Caller | None, float]] = {}

    def cached(self, secret: str) -> tuple[bool, Caller | None]:
        """(known, caller) without waiting: known is False when the store must be asked."""
        entry = self._entries.get(hashlib.sha256(secret.encode()).digest())
        if entry is None or self._now() - entry[1] > self._ttl:
            return False, None
        return True, entry[0]

    async def lookup(self, secret: str) -> Caller | None:
        """Ask the store and remember its answer."""
        caller = await self._check(secret)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[hashlib.sha256(secret.encode()).digest()] = (caller, self._now())
        return caller

    def clear(self) -> None:
        self._entries.clear()
