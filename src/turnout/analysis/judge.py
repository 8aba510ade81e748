"""Judges: a decision on the canary's traffic, compared with the baseline's.

Measuring and judging are two seams (as argo-rollouts keeps metric providers apart from
analysis): a `MetricSource` (`turnout.analysis.sources`) turns readings into `Window`s of
traffic, one per subject; a `Judge` takes the canary's window, the baseline's (the stable
revision serving at the same time, or a flag's `off` cohort) and the step's `Criteria`, and
returns a `Decision` with its evidence. The engine does not know which judge runs: the
session passes one in.

Four verdicts, as DESIGN has them: Successful continues, Failed rolls back, Inconclusive (too
little traffic to tell) holds for a human and never promotes, Error (the judge could not
judge) is treated like Inconclusive.

`ThresholdJudge` is the first judge: fixed thresholds on the canary's error rate and p99,
with the baseline's numbers in the evidence for a human to compare. `SequentialJudge`
(`turnout.analysis.sequential`) compares the canary with the baseline, with bounds valid
however often it is asked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from turnout.plan import Subject
from turnout.routers.base import Counters


class Verdict(enum.Enum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


@dataclass(frozen=True)
class Criteria:
    """What a step asks of the canary (from the strategy's `gate` or an `analysis` step).

    The last four are read by comparing judges (`turnout.analysis.sequential`): how much
    worse than the baseline the canary may be (None: that comparison is off), how long it
    must be watched before it can pass, and the false-alarm budget of all its tests.
    """

    max_error_rate: float
    max_p99: float
    min_requests: int
    max_error_rate_increase: float | None = None  # a share: 0.01 is one percentage point
    max_p99_increase: float | None = None  # seconds
    min_soak: float = 0.0  # seconds
    alpha: float = 0.01

    @property
    def compares(self) -> bool:
        """Whether the canary is to be compared with its baseline (an increase is set)."""
        return self.max_error_rate_increase is not None or self.max_p99_increase is not None

    @classmethod
    def of(cls, limits: object) -> Criteria:
        """The criteria a gate or an analysis step (anything with these attributes) sets."""
        return cls(**{name: getattr(limits, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Window:
    """The traffic of one subject between two readings, `seconds` apart."""

    subject: Subject
    counters: Counters
    seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """A judge's answer: the verdict, why, and the numbers it was drawn from."""

    verdict: Verdict
    reason: str
    evidence: dict[str, object] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAILED

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.SUCCESSFUL


class Judge(Protocol):
    def judge(self, canary: Window, baseline: Window | None, criteria: Criteria) -> Decision:
        """Decide on `canary` (with `baseline` beside it when there is one); never raises."""
        ...


def summary(window: Window) -> dict[str, object]:
    """A window's numbers as evidence: requests, failures, error rate, p99 (seconds)."""
    c = window.counters
    return {"requests": c.requests, "in_flight": c.in_flight,
            "failures": c.responses_5xx + c.connection_errors,
            "error_rate": round(c.error_rate, 6), "p99": c.quantile(0.99),
            "seconds": round(window.seconds, 3)}


class ThresholdJudge:
    """Fixed thresholds on the canary alone; the baseline is reported, not compared."""

    def judge(self, canary: Window, baseline: Window | None, criteria: Criteria) -> Decision:
        c = canary.counters
        rate, p99 = c.error_rate, c.quantile(0.99)
        errors = c.responses_5xx + c.connection_errors
        evidence: dict[str, object] = {"canary": summary(canary)}
        if baseline is not None:
            evidence["baseline"] = summary(baseline)
        evidence["criteria"] = {"max_error_rate": criteria.max_error_rate, "max_p99": criteria.max_p99,
                                "min_requests": criteria.min_requests}
        # Too many errors to pass even once `min_requests` is reached: fail without waiting.
        if errors > criteria.max_error_rate * max(c.finished, criteria.min_requests):
            reason = (f"error rate {rate:.1%} over {c.finished} requests exceeds "
                      f"{criteria.max_error_rate:.1%}")
            return Decision(Verdict.FAILED, reason, evidence)
        if c.finished < max(1, criteria.min_requests):
            waiting = f" ({c.in_flight} more unanswered)" if c.in_flight else ""
            reason = (f"{c.finished} requests answered{waiting}, fewer than the "
                      f"{criteria.min_requests} needed to judge")
            return Decision(Verdict.INCONCLUSIVE, reason, evidence)
        if p99 > criteria.max_p99:
            reason = f"p99 latency up to {p99 * 1000:.0f} ms exceeds {criteria.max_p99 * 1000:.0f} ms"
            return Decision(Verdict.FAILED, reason, evidence)
        # no answer timed (a router or a Prometheus source without latency): say so, never "p99 <= 0"
        latency = f"p99 <= {p99 * 1000:.0f} ms" if sum(c.latency) else "no answer timed: p99 not judged"
        reason = f"{c.finished} requests, error rate {rate:.2%}, {latency}"
        return Decision(Verdict.SUCCESSFUL, reason, evidence)
