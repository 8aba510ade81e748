"""API tokens on the request path: a dict lookup of sha256(secret), refreshed from the store.

The store keeps only hashes and answers `check_token(secret)`. Asking it on every
request would put a database query on the hot path, so answers (including "unknown")
are cached by the secret's SHA-256 for a few seconds; a request whose entry is missing
or stale goes through the store once, off the event loop, and refreshes it. The cache
is emptied whenever the flag revision changes too, and is bounded so that a client
spraying random secrets cannot grow it without limit.

Revocation: `follow` re-reads the store's revocation mark (`FlagStore.token_revocations`)
every half second and empties the cache when it moved, so a revoked token is refused
(401) within about half a second of `turnout flags token revoke`; the TTL is the
backstop should that read fail. A lookup that started before the cache was emptied
does not put its (possibly stale) answer back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from turnout.errors import TurnoutError

Kind = Literal["client", "admin"]
TTL_S = 5.0
REVOCATION_POLL_S = 0.5
MAX_ENTRIES = 10_000

log = logging.getLogger("turnout.server")


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
        self._generation = 0  # grows whenever the cache is emptied

    def cached(self, secret: str) -> tuple[bool, Caller | None]:
        """(known, caller) without waiting: known is False when the store must be asked."""
        entry = self._entries.get(hashlib.sha256(secret.encode()).digest())
        if entry is None or self._now() - entry[1] > self._ttl:
            return False, None
        return True, entry[0]

    async def lookup(self, secret: str) -> Caller | None:
        """Ask the store and remember its answer (unless the cache was emptied meanwhile)."""
        generation = self._generation
        caller = await self._check(secret)
        if generation != self._generation:
            return caller
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[hashlib.sha256(secret.encode()).digest()] = (caller, self._now())
        return caller

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    async def follow(self, read_mark: Callable[[], Awaitable[object]], *,
                     every: float = REVOCATION_POLL_S) -> None:
        """Empty the cache whenever the store's revocation mark moves, until cancelled."""
        mark: object = None
        while True:
            try:
                new = await read_mark()
                if mark is not None and new != mark:
                    self.clear()
                mark = new
            except TurnoutError as exc:
                log.warning("cannot read token revocations: %s", exc)
            await asyncio.sleep(every)
