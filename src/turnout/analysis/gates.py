"""Gates on live metrics: the canary's error rate and p99 latency from the router's counters.

A gate looks at the traffic between two readings of the router's counters and returns a
verdict. Failed rolls back; Inconclusive (too little traffic to tell) pauses for a human
where a verdict is required. The statistical judge comes later; this one is thresholds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from turnout.routers.base import Counters


class Verdict(enum.Enum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float
    max_p99: float
    min_requests: int


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    requests: int = 0
    error_rate: float = 0.0
    p99: float = 0.0


def judge(window: Counters, limits: Thresholds) -> Judgement:
    """Judge one window of a revision's traffic against the thresholds."""
    rate, p99 = window.error_rate, window.quantile(0.99)
    errors = window.responses_5xx + window.connection_errors
    # Too many errors to pass even once `min_requests` is reached: fail without waiting.
    if errors > limits.max_error_rate * max(window.requests, limits.min_requests):
        reason = f"error rate {rate:.1%} over {window.requests} requests exceeds {limits.max_error_rate:.1%}"
        return Judgement(Verdict.FAILED, reason, window.requests, rate, p99)
    if window.requests < max(1, limits.min_requests):
        reason = f"{window.requests} requests, fewer than the {limits.min_requests} needed to judge"
        return Judgement(Verdict.INCONCLUSIVE, reason, window.requests, rate, p99)
    if p99 > limits.max_p99:
        reason = f"p99 latency up to {p99 * 1000:.0f} ms exceeds {limits.max_p99 * 1000:.0f} ms"
        return Judgement(Verdict.FAILED, reason, window.requests, rate, p99)
    reason = f"{window.requests} requests, error rate {rate:.2%}, p99 <= {p99 * 1000:.0f} ms"
    return Judgement(Verdict.SUCCESSFUL, reason, window.requests, rate, p99)
