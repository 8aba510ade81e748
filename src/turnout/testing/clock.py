"""`FakeClock`: injected time that a ten-minute pause crosses at once."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A `Clock` whose `sleep` moves time forward at once and only yields to the loop.

    Concurrent sleepers each push the clock forward, so with several tasks sleeping at
    once fake time runs faster than their sleeps add up to; deadlines still hold.
    """

    def __init__(self, *, start: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.slept = 0.0  # total seconds asked for by sleep()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping (for tests driving time by hand)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept += seconds
        self.advance(seconds)
        await asyncio.sleep(0)
