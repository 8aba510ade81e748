"""What a load run records and how it is judged: one `Sample` per request, `summarize`.

`summarize` turns the samples into what a deployment is judged by: failures, re-sends,
the longest time without a successful answer, how many users saw the new version before
the cutover, and which versions served at the end. `LoadSummary.clean` holds only when
every request was answered, without a 5xx, on its first send. Plain values and pure
functions, so the judging is tested on hand-made samples (`tests/unit/test_load_summary.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

TAIL_S = 1.0  # last_versions looks at answers completed in this final window


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: `status` is None and `error` says why when no answer came.

    `sends` is 2 when the first send was lost on a reused keep-alive connection and the
    request went out again on a fresh one; `lost` then says how the first was lost.
    """

    sent: float
    done: float
    status: int | None
    version: str | None
    user: str
    error: str | None
    sends: int = 1
    lost: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500

    @property
    def resent(self) -> bool:
        return self.sends > 1


@dataclass(frozen=True, slots=True)
class LoadSummary:
    requests: int
    failed: int
    resent: int
    longest_gap_s: float
    exposed_users: int
    versions: dict[str, int]
    last_versions: dict[str, int]
    errors: dict[str, int]
    resent_errors: dict[str, int]

    @property
    def clean(self) -> bool:
        """Every request answered on its first send, none with a 5xx: what a deployment must show."""
        return self.failed == 0 and self.resent == 0

    def problems(self) -> str:
        """What kept the run from being clean, e.g. `failed 2 (HTTP 503: 2); re-sent 1 (...)`."""
        parts = [f"{label} {count} ({_kinds(kinds)})"
                 for label, count, kinds in (("failed", self.failed, self.errors),
                                             ("re-sent", self.resent, self.resent_errors))
                 if count]
        return "; ".join(parts) or "none"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))


def summarize(
    samples: Iterable[Sample],
    *,
    new_version: str,
    start: float,
    end: float,
    until: float | None = None,
) -> LoadSummary:
    """Judge a run that sent requests from `start` to `end` (monotonic seconds).

    `longest_gap_s` is the longest stretch of [start, end] in which no successful
    answer completed. `exposed_users` counts users who got an answer from
    `new_version` strictly before `until` (every such user when `until` is None).
    `versions` counts answers per `X-Version`, whatever their status; `last_versions`
    does the same for answers completed in the final second; `errors` counts failures
    by kind (`HTTP 503`, `timeout`, `connection refused`, ...). `resent` counts requests
    that took more than one send, answered or not, and `resent_errors` how their first
    send was lost; a re-sent request that then failed counts in both.
    """
    samples = list(samples)
    successes = sorted(s.done for s in samples if not s.failed and start <= s.done <= end)
    gap = max((b - a for a, b in pairwise([start, *successes, max(start, end)])), default=0.0)
    exposed = {
        s.user for s in samples if s.version == new_version and (until is None or s.done < until)
    }
    errors = Counter(
        f"HTTP {s.status}" if s.status is not None else s.error or "no answer"
        for s in samples
        if s.failed
    )
    resent = Counter(s.lost or "lost" for s in samples if s.resent)
    return LoadSummary(
        requests=len(samples),
        failed=sum(errors.values()),
        resent=sum(resent.values()),
        longest_gap_s=gap,
        exposed_users=len(exposed),
        versions=dict(Counter(s.version for s in samples if s.version is not None)),
        last_versions=dict(
            Counter(s.version for s in samples if s.version is not None and s.done >= end - TAIL_S)
        ),
        errors=dict(errors),
        resent_errors=dict(resent),
    )
