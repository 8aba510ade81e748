"""Failed authentications per client address, and the addresses answered 429 for a while.

Two tables, keyed by address: failures (when the address's current window began, how
many failures fell in it) and blocks (until when). The `limit`-th failure inside one
`window` moves the address from the first to the second for `block` seconds; while it
is there the server answers 429 with `Retry-After` without looking at the token, so
guessing tokens costs the guesser time and costs the store nothing. Success does not
clear a count (a client that has one good token and sprays others is still counted).

Each table holds at most `max_addresses` entries, least recently failed first out: an
attacker with many addresses cannot grow it without bound, only push older entries out
(a pushed-out address starts again from zero, which is the price of bounded memory).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAX_ADDRESSES = 10_000


class FailedAuth:
    """Failures per address (see the module docstring)."""

    def __init__(self, *, limit: int, window: float, block: float,
                 max_addresses: int = MAX_ADDRESSES,
                 now: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._block = block
        self._max = max_addresses
        self._now = now
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()  # window start, failures
        # address -> blocked until; read on every request, so empty (falsy) when none is
        self.blocked: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts) + len(self.blocked)

    def retry_after(self, address: str) -> int:
        """Whole seconds the address stays blocked (at least 1), or 0 when it is not."""
        until = self.blocked.get(address)
        if until is None:
            return 0
        left = until - self._now()
        if left <= 0:
            del self.blocked[address]
            return 0
        return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        now = self._now()
        start, count = self._counts.pop(address, (now, 0))
        if now - start > self._window:
            start, count = now, 0
        if count + 1 >= self._limit:
            self.blocked[address] = now + self._block
            self.blocked.move_to_end(address)
            _trim(self.blocked, self._max)
            return  # counting starts again from zero once the block ends
        self._counts[address] = (start, count + 1)
        _trim(self._counts, self._max)


def _trim(table: OrderedDict[str, Any], size: int) -> None:
    """Drop the oldest entries beyond `size`."""
    while len(table) > size:
        table.popitem(last=False)
