"""Metric sources: cumulative traffic counters per subject, read at a moment.

A subject is typed (`turnout.plan`): a revision, or a flag's `on` or `off` cohort. A source
answers a reading of every subject asked for; the engine takes one reading when a step
starts watching and one at each look, and the `Window` between two of them is what a judge
decides on. Counters only grow (the builtin router keeps them across worker restarts), so
a window never holds negative traffic.

`RouterCounters` reads the router's own counters through the `Router` seam. A Prometheus
source (queries of metrics the app exports) plugs in here later, with the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from turnout.analysis.judge import Window
from turnout.plan import CohortSubject, RevisionSubject, Subject
from turnout.routers.base import Counters, Router, RouterStats


class MetricSource(Protocol):
    async def read(self, subjects: Sequence[Subject]) -> dict[Subject, Counters]:
        """The counters of each subject so far (zeros for one that saw no traffic yet)."""
        ...


@dataclass(frozen=True)
class Reading:
    """What a source answered at `at` (the engine's clock)."""

    at: float
    counters: Mapping[Subject, Counters]

    def window(self, later: Reading, subject: Subject) -> Window:
        """The traffic of `subject` from this reading to `later`."""
        before = self.counters.get(subject, Counters())
        after = later.counters.get(subject, Counters())
        return Window(subject, after.minus(before), max(0.0, later.at - self.at))


class RouterCounters:
    """Counters per revision and per flag cohort, as the router counts them."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def read(self, subjects: Sequence[Subject]) -> dict[Subject, Counters]:
        stats = await self.router.stats()
        return {subject: counters_of(stats, subject) for subject in subjects}


def counters_of(stats: RouterStats, subject: Subject) -> Counters:
    """A subject's counters; a revision's with its requests in flight (its backends are its
    instances, `<revision>-<slot>`), so that a request still unanswered is not judged."""
    match subject:
        case RevisionSubject(revision=revision):
            counters = stats.revisions.get(revision, Counters())
            waiting = sum(n for backend, n in stats.in_flight.items()
                          if backend.rpartition("-")[0] == revision)
            return counters.model_copy(update={"in_flight": waiting}) if waiting else counters
        case CohortSubject(flag=flag, on=on):
            return stats.cohorts.get(f"{flag}:{'on' if on else 'off'}", Counters())
    return Counters()  # pragma: no cover
