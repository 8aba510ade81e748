"""Traffic counters of one proxy worker: per revision, plus in-flight requests per backend.

Counting is a handful of integer additions and one bisection per request; the pydantic
`RouterStats` model is built only when the admin API asks for it.
"""

from __future__ import annotations

import secrets
from bisect import bisect_left

from turnout.routers.base import LATENCY_BOUNDS, Counters, RouterStats


class _Revision:
    __slots__ = ("errors", "latency", "requests", "responses_5xx")

    def __init__(self) -> None:
        self.requests = 0
        self.responses_5xx = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)


class Metrics:
    """Counters since this worker started; `worker` is a random id per start."""

    def __init__(self) -> None:
        self.worker = secrets.token_hex(6)
        self._revisions: dict[str, _Revision] = {}
        self.in_flight: dict[str, int] = {}

    def _rev(self, revision: str) -> _Revision:
        counters = self._revisions.get(revision)
        if counters is None:
            counters = self._revisions[revision] = _Revision()
        return counters

    def request(self, revision: str) -> None:
        self._rev(revision).requests += 1

    def response(self, revision: str, status: int, seconds: float) -> None:
        counters = self._rev(revision)
        if status >= 500:
            counters.responses_5xx += 1
        counters.latency[bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def connection_error(self, revision: str) -> None:
        """A request that failed to reach or hear from its backend (answered 502 if possible).

        Not also counted as a 5xx, so `Counters.error_rate` counts each failure once.
        """
        self._rev(revision).errors += 1

    def begin(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 0) + 1

    def end(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 1) - 1

    def snapshot(self, generation: int, current_ids: set[str]) -> RouterStats:
        """Stats for the admin API; removed backends stay listed while requests are in flight."""
        for backend_id in [k for k, v in self.in_flight.items() if v <= 0]:
            if backend_id not in current_ids:
                del self.in_flight[backend_id]
        in_flight = {backend_id: 0 for backend_id in current_ids}
        in_flight.update(self.in_flight)
        revisions = {
            name: Counters(
                requests=c.requests,
                responses_5xx=c.responses_5xx,
                connection_errors=c.errors,
                latency=list(c.latency),
            )
            for name, c in self._revisions.items()
        }
        return RouterStats(
            worker=self.worker, generation=generation, revisions=revisions, in_flight=in_flight
        )
