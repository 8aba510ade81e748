"""Traffic counters of one proxy worker: per revision and flag cohort, in-flight per backend.

Counting is a handful of integer additions and one bisection over the bounds tuple per
request, on a counters object the exchange looked up once; the pydantic
`RouterStats` model is built only when the admin API asks for it. While the proxy
evaluates flags, a request counts into the counters of its (combination of flag results,
revision) pair instead, so it still counts into exactly one object however many flags
there are; the snapshot adds the pairs up per revision and per `<flag>:on|off` cohort.
"""

from __future__ import annotations

import secrets
from bisect import bisect_left

from turnout.routers.base import LATENCY_BOUNDS, Counters, RouterStats


class RevisionCounters:
    """One revision's counters; exchanges hold a reference and count without lookups."""

    __slots__ = ("errors", "latency", "requests", "responses_5xx")

    def __init__(self) -> None:
        self.requests = 0
        self.responses_5xx = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)

    def response(self, status: int, seconds: float) -> None:
        if status >= 500:
            self.responses_5xx += 1
        self.latency[bisect_left(LATENCY_BOUNDS, seconds)] += 1


class Metrics:
    """Counters since this worker started; `worker` is a random id per start."""

    def __init__(self) -> None:
        self.worker = secrets.token_hex(6)
        self.revisions: dict[str, RevisionCounters] = {}  # read directly per request
        self.in_flight: dict[str, int] = {}
        # (cohort keys such as ("a:on", "b:off"), revision or "" without a pool) -> counters
        self.combos: dict[tuple[tuple[str, ...], str], RevisionCounters] = {}

    def revision(self, revision: str) -> RevisionCounters:
        """The counters of `revision`, created on first use.

        `errors` counts requests that failed to reach or hear from their backend (answered
        502 if possible); those are not also counted as 5xx, so `Counters.error_rate` counts
        each failure once.
        """
        counters = self.revisions.get(revision)
        if counters is None:
            counters = self.revisions[revision] = RevisionCounters()
        return counters

    def combo(self, cohorts: tuple[str, ...], revision: str) -> RevisionCounters:
        """The counters of requests to `revision` in every one of `cohorts` (`<flag>:on|off`)."""
        counters = self.combos.get((cohorts, revision))
        if counters is None:
            counters = self.combos[cohorts, revision] = RevisionCounters()
        return counters

    def begin(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 0) + 1

    def end(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 1) - 1

    def snapshot(
        self, generation: int, current_ids: set[str], flags: tuple[str, ...] = ()
    ) -> RouterStats:
        """Stats for the admin API; removed backends stay listed while requests are in flight.

        Both cohorts of every flag in `flags` (those evaluated now) are listed, if only as 0.
        """
        for backend_id in [k for k, v in self.in_flight.items() if v <= 0]:
            if backend_id not in current_ids:
                del self.in_flight[backend_id]
        in_flight = {backend_id: 0 for backend_id in current_ids}
        in_flight.update(self.in_flight)
        revisions = {name: _counters(c) for name, c in self.revisions.items()}
        cohorts = {f"{name}:{side}": Counters() for name in flags for side in ("on", "off")}
        for (keys, revision), c in self.combos.items():
            if revision:
                _add(revisions, revision, c)
            for key in keys:
                _add(cohorts, key, c)
        return RouterStats(
            worker=self.worker, generation=generation, revisions=revisions, in_flight=in_flight,
            cohorts=cohorts,
        )


def _add(totals: dict[str, Counters], name: str, c: RevisionCounters) -> None:
    total = totals.get(name)
    if total is None:
        totals[name] = _counters(c)
        return
    total.requests += c.requests
    total.responses_5xx += c.responses_5xx
    total.connection_errors += c.errors
    total.latency = [a + b for a, b in zip(total.latency, c.latency, strict=True)]


def _counters(c: RevisionCounters) -> Counters:
    return Counters(
        requests=c.requests,
        responses_5xx=c.responses_5xx,
        connection_errors=c.errors,
        latency=list(c.latency),
    )
