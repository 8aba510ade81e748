"""The sequential judge: the canary against its baseline, with tests valid at every look.

The engine asks its judge about the same growing windows at every gate interval. A test
built for one look (a z-test, Kayenta's Mann-Whitney) fails good canaries far more often
than its level says once it is asked hundreds of times. `SequentialJudge` draws confidence
sequences instead: bounds that hold at all times at once, so looking every second spends no
more of the false-alarm budget than looking once.

Every rule bounds a proportion, or a difference of two, with the one-sided normal mixture
boundary of Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences" (Annals of Statistics 49(2), 2021), applied to the
estimate and its plug-in variance as in Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences" (arXiv 2103.06476).
For a difference of two proportions this is the normal-mixture SPRT of Johari, Koomen,
Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B tests"
(Operations Research 70(3), 2022). The guarantee is asymptotic in the counts, so each
variance adds one failure and one success to its side (Agresti and Caffo) and comparisons
wait for `min_requests` on both sides; `bench/judges.py` measures the false alarms.

The two comparisons, with the canary's excess over its baseline bounded three ways (a
lower and an upper bound at the rule's alpha, and a "likely" lower bound at `LIKELY_LEVEL`,
one half), each against its tolerance:
- `error_rate_increase`: the canary's error rate (5xx and connection errors over requests)
  minus the baseline's, against `max_error_rate_increase`.
- `p99_increase`: take T, the first histogram bound at or above the baseline's p99 bucket
  plus `max_p99_increase`; the share of canary answers slower than T minus the baseline's
  share, against one point (`SLOW_SHARE_TOLERANCE`). The baseline has at most 1% of its
  answers above T, so a canary a point beyond it has its p99 past T: past the baseline's
  p99 by more than the increase. A shift of exactly the increase is within it (a +50 ms
  canary passes `max_p99_increase: 50ms`). T follows the baseline's data, so both levels
  are split over the histogram's bounds and the bounds hold at every one of them at once.

A comparison fails once the canary is significantly worse and practically worse: shown
worse than its baseline (the lower bound above 0) and likely past the tolerance (the likely
bound above it). It passes once shown within the tolerance (the upper bound at or under
it); otherwise it is pending. What that guarantees, at every look and per rule:
- a canary no worse than its baseline (a true excess <= 0) is failed with probability at
  most alpha: its lower bound ever exceeds 0 with at most that probability;
- a canary worse than its baseline but within the tolerance is failed with probability at
  most one half, never more however long it is watched: its likely bound ever exceeds the
  tolerance with at most that probability. It is not alpha: showing the excess past the
  tolerance at alpha (the rule before) took 80-95 s to fail +2 points of errors at a 1-point
  tolerance and 50 canary requests a second, and at that traffic no test valid at alpha for
  canaries at the tolerance can do it in 30 s. "Shown worse than the baseline" is what
  takes the time (about 24 s for +2 points); the likely bound is past the tolerance by
  then, so it costs no time there. The point estimate in its place (None for
  `likely_level`) would fail most canaries at the tolerance that are watched for minutes,
  their estimate being past it half the time, and some well within it. `bench/judges.py`
  measures both at half and at all of the tolerance (BENCHMARKS.md, "Judges");
- a canary past the tolerance is passed with probability at most alpha: its upper bound
  ever falls under the tolerance with at most that probability.
With a tolerance of 0, shown worse is enough (the likely bound is the higher one while
alpha is under one half).

The guardrails, each failed as soon as its bound is past its limit:
- `error_rate` and `p99`: guardrails on the canary alone, like Flagger's. The error rate
  with the same bounds against `max_error_rate`; the p99 bucket against `max_p99` once
  `min_requests` answers are in (a fixed rule, as `ThresholdJudge` has it).

`alpha` is split evenly (Bonferroni) over the bounded rules the criteria switch on, whether
or not a baseline is there to compare with, so the split never moves between looks; the
likely level is not split, it bounds each comparison on its own. A
window passes when every rule is within its limit and the canary was watched `min_soak`
seconds; Inconclusive otherwise, which holds for a human and never promotes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from turnout.analysis.judge import Criteria, Decision, Judge, ThresholdJudge, Verdict, Window
from turnout.routers.base import LATENCY_BOUNDS, Counters

# The mixtures are tightest when an excess of this size (one percentage point) becomes
# visible; a wider or narrower choice moves that point, never the guarantee.
TUNED_FOR = 0.01
# How many more points of its answers the canary may have above T than the baseline.
SLOW_SHARE_TOLERANCE = 0.01
# A comparison fails a canary shown worse than its baseline only once a bound at this level
# is past the tolerance too: "more likely than not past it", valid at every look.
LIKELY_LEVEL = 0.5

FAILED, WITHIN, PENDING = "failed", "within", "pending"


def _log_phi(u: float) -> float:
    """log of the standard normal distribution function at u >= 0."""
    return math.log(0.5 * math.erfc(-u / math.sqrt(2.0)))


def radius(variance: float, alpha: float, tuned_for: float = TUNED_FOR) -> float:
    """Half-width of a one-sided bound, valid at every look, on an estimate of `variance`.

    The one-sided normal mixture (mixing variance `tuned_for`**2, rho its inverse) crosses
    1/alpha when its sum S reaches s, in information V = 1 / variance; with u = s / sqrt(V +
    rho) that is log 2 + log(rho / (V + rho)) / 2 + u**2 / 2 + log Phi(u) = log(1 / alpha),
    solved by Newton's method from the two-sided closed form, which lies above the root:
    the left side is convex and increasing in u, so every step stays above it (the bound
    errs wide). The bound on the estimate is s / V. By Ville's inequality the estimate
    exceeds the truth by more, at some look ever, with probability at most alpha.
    """
    rho = 1.0 / (tuned_for * tuned_for)
    excess = math.log(1.0 / alpha) - math.log(2.0) - 0.5 * math.log(rho * variance / (1.0 + rho * variance))
    u = math.sqrt(2.0 * (excess + math.log(2.0)))
    for _ in range(50):
        log_phi = _log_phi(u)
        slope = u + math.exp(-0.5 * u * u - log_phi) / math.sqrt(2.0 * math.pi)
        step = (0.5 * u * u + log_phi - excess) / slope
        u -= step
        if step < 1e-9:
            break
    return u * math.sqrt(variance * (1.0 + rho * variance))


@dataclass(frozen=True)
class Share:
    """`hits` of `total`: failed requests, or answers slower than a bound."""

    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0

    @property
    def variance(self) -> float:
        """The plug-in variance of `rate`, one hit and one miss added so none is certain."""
        p = (self.hits + 1) / (self.total + 2)
        return p * (1.0 - p) / max(self.total, 1)


@dataclass(frozen=True)
class Bound:
    """An estimate with its always-valid lower and upper bounds, each one-sided at `alpha`,
    and `likely`, a lower bound at the looser `level` (the estimate itself when None)."""

    estimate: float
    lower: float
    upper: float
    likely: float
    level: float | None = None

    @classmethod
    def around(cls, estimate: float, variance: float, alpha: float, level: float | None = None) -> Bound:
        half = radius(variance, alpha)
        likely = estimate if level is None else estimate - radius(variance, level)
        return cls(estimate, estimate - half, estimate + half, likely, level)

    def against(self, limit: float) -> str:
        """A guardrail: failed once shown past `limit`, within once shown at or under it."""
        return FAILED if self.lower > limit else WITHIN if self.upper <= limit else PENDING

    def beside(self, tolerance: float) -> tuple[str, str]:
        """A comparison: failed once shown worse than the baseline (`lower` above 0) and
        likely past `tolerance` (`likely` above it), within once `upper` is at or under
        `tolerance`; and, in words, which of these holds."""
        worse, past = self.lower > 0, self.likely > tolerance
        likely = "estimated" if self.level is None else "likely"
        if worse and past:
            return FAILED, f"shown worse than the baseline and {likely} past the tolerance"
        if self.upper <= tolerance:
            return WITHIN, "shown within the tolerance"
        if worse:
            return PENDING, f"shown worse than the baseline, not {likely} past the tolerance"
        if past:
            return PENDING, f"{likely} past the tolerance, not yet shown worse than the baseline"
        return PENDING, "neither shown worse than the baseline nor shown within the tolerance"

    def evidence(self) -> dict[str, object]:
        numbers: dict[str, object] = {"estimate": _num(self.estimate), "lower": _num(self.lower),
                                      "upper": _num(self.upper)}
        if self.level is not None:
            numbers |= {"likely_at_least": _num(self.likely), "likely_level": _num(self.level)}
        return numbers


@dataclass(frozen=True)
class Finding:
    """One rule's answer: failed, within its limit or pending, a sentence, and its numbers."""

    rule: str
    state: str
    says: str
    evidence: dict[str, object]


def _num(x: float) -> float:
    return round(x, 6)


def _points(x: float) -> str:
    return f"{x * 100:+.2f}"


def _ms(seconds: float) -> str:
    return "+Inf" if math.isinf(seconds) else f"{seconds * 1000:g} ms"


def _failures(c: Counters) -> Share:
    return Share(min(c.responses_5xx + c.connection_errors, c.finished), c.finished)


def _quantile_index(latency: list[int], q: float) -> int:
    """The index of the bucket holding quantile `q` (len(LATENCY_BOUNDS) for +Inf)."""
    rank, seen = q * sum(latency), 0
    for index, count in enumerate(latency):
        seen += count
        if seen >= rank:
            return index
    return len(latency) - 1


def _threshold_index(p99_index: int, increase: float) -> int | None:
    """The first bound at or above the bound of `p99_index` plus `increase` (None: none is)."""
    if p99_index >= len(LATENCY_BOUNDS):
        return None
    target = LATENCY_BOUNDS[p99_index] + increase - 1e-9  # 0.075 + 0.025 is not quite 0.1
    return next((i for i in range(p99_index, len(LATENCY_BOUNDS)) if LATENCY_BOUNDS[i] >= target), None)


def _span(bound: Bound) -> str:
    """The estimate, the likely lower bound if any, and the bounds, in points."""
    likely = "" if bound.level is None else f" (likely at least {_points(bound.likely)})"
    return (f"{_points(bound.estimate)} points{likely}, between {_points(bound.lower)} and "
            f"{_points(bound.upper)}")


def error_rate_increase(canary: Counters, baseline: Counters, tolerance: float, alpha: float,
                        min_requests: int, *, level: float | None = LIKELY_LEVEL) -> Finding:
    c, b = _failures(canary), _failures(baseline)
    numbers: dict[str, object] = {"canary": [c.hits, c.total], "baseline": [b.hits, b.total],
                                  "tolerance": tolerance, "alpha": _num(alpha)}
    if min(c.total, b.total) < max(1, min_requests):
        says = f"error rates: {c.total} canary and {b.total} baseline requests, {min_requests} needed on each"
        return Finding("error_rate_increase", PENDING, says, numbers)
    bound = Bound.around(c.rate - b.rate, c.variance + b.variance, alpha, level)
    state, condition = bound.beside(tolerance)
    says = (f"error rate {c.rate:.2%} against the baseline's {b.rate:.2%}: increase "
            f"{_span(bound)}, tolerance {tolerance * 100:.2f}: {condition}")
    numbers |= {**bound.evidence(), "condition": condition}
    return Finding("error_rate_increase", state, says, numbers)


def p99_increase(canary: Counters, baseline: Counters, increase: float, alpha: float,
                 min_requests: int, *, level: float | None = LIKELY_LEVEL) -> Finding:
    nc, nb = sum(canary.latency), sum(baseline.latency)
    per_bound = alpha / len(LATENCY_BOUNDS)
    numbers: dict[str, object] = {"max_p99_increase": increase, "tolerance": SLOW_SHARE_TOLERANCE,
                                  "alpha": _num(alpha), "alpha_per_bound": per_bound}
    if min(nc, nb) < max(1, min_requests):
        says = f"latency: {nc} canary and {nb} baseline answers, {min_requests} needed on each"
        return Finding("p99_increase", PENDING, says, numbers)
    at = _quantile_index(baseline.latency, 0.99)
    cut = _threshold_index(at, increase)
    numbers["baseline_p99"] = LATENCY_BOUNDS[at] if at < len(LATENCY_BOUNDS) else None
    if cut is None:
        says = "latency: the baseline's p99 plus the increase is past the histogram's last bound"
        return Finding("p99_increase", PENDING, says, numbers)
    c, b = Share(sum(canary.latency[cut + 1:]), nc), Share(sum(baseline.latency[cut + 1:]), nb)
    level_per_bound = None if level is None else level / len(LATENCY_BOUNDS)
    bound = Bound.around(c.rate - b.rate, c.variance + b.variance, per_bound, level_per_bound)
    state, condition = bound.beside(SLOW_SHARE_TOLERANCE)
    numbers |= {"threshold": LATENCY_BOUNDS[cut], "canary_slower": [c.hits, c.total],
                "baseline_slower": [b.hits, b.total], **bound.evidence(), "condition": condition}
    says = (f"{c.rate:.2%} of canary answers slower than {_ms(LATENCY_BOUNDS[cut])} (the baseline's "
            f"p99 bucket {_ms(LATENCY_BOUNDS[at])} + {_ms(increase)}) against {b.rate:.2%} of the "
            f"baseline's: a difference of {_span(bound)}, tolerance "
            f"{SLOW_SHARE_TOLERANCE * 100:.2f}: {condition}")
    return Finding("p99_increase", state, says, numbers)


def error_rate_guardrail(canary: Counters, limit: float, alpha: float) -> Finding:
    c = _failures(canary)
    numbers: dict[str, object] = {"canary": [c.hits, c.total], "max": limit, "alpha": _num(alpha)}
    if not c.total:
        return Finding("error_rate", PENDING, "no canary request yet", numbers)
    bound = Bound.around(c.rate, c.variance, alpha)
    says = (f"canary error rate {c.rate:.2%} over {c.total} requests, between {bound.lower:.2%} "
            f"and {bound.upper:.2%}, limit {limit:.2%}")
    return Finding("error_rate", bound.against(limit), says, numbers | bound.evidence())


def p99_guardrail(canary: Counters, limit: float, min_requests: int) -> Finding:
    samples, p99 = sum(canary.latency), canary.quantile(0.99)
    numbers: dict[str, object] = {"samples": samples, "p99": None if math.isinf(p99) else p99,
                                  "max": limit, "min_requests": min_requests}
    if samples < max(1, min_requests):
        return Finding("p99", PENDING, f"{samples} canary answers timed, {min_requests} needed", numbers)
    state = FAILED if p99 > limit else WITHIN
    says = f"canary p99 bucket up to {_ms(p99)} over {samples} answers, limit {_ms(limit)}"
    return Finding("p99", state, says, numbers)


def tests_on(criteria: Criteria) -> list[str]:
    """The bounded rules the criteria switch on: they share `alpha` evenly."""
    rules = [name for name, value in (("error_rate_increase", criteria.max_error_rate_increase),
                                      ("p99_increase", criteria.max_p99_increase)) if value is not None]
    return [*rules, "error_rate"] if criteria.max_error_rate < 1 else rules


def _side(window: Window) -> dict[str, object]:
    c, p99 = window.counters, window.counters.quantile(0.99)
    return {"requests": c.requests, "failures": c.responses_5xx + c.connection_errors,
            "error_rate": _num(c.error_rate), "timed": sum(c.latency),
            "p99": None if math.isinf(p99) else p99, "seconds": _num(window.seconds)}


def _invalid(criteria: Criteria) -> str | None:
    if not 0 < criteria.alpha < 1:
        return f"alpha must be between 0 and 1, not {criteria.alpha}"
    for name in ("max_error_rate_increase", "max_p99_increase", "min_soak", "max_error_rate", "max_p99"):
        value = getattr(criteria, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{name} must be a finite number >= 0, not {value}"
    return None


class SequentialJudge:
    """The canary against its baseline with always-valid bounds, plus guardrails on its own.

    `likely_level`: the level of the bound a comparison must show past its tolerance to
    fail (`LIKELY_LEVEL`); None puts the point estimate in its place (for comparison in
    `bench/judges.py`: no guarantee for canaries within the tolerance).
    """

    def __init__(self, likely_level: float | None = LIKELY_LEVEL) -> None:
        if likely_level is not None and not 0 < likely_level < 1:
            raise ValueError(f"likely_level must be between 0 and 1 or None, not {likely_level}")
        self.likely_level = likely_level

    def judge(self, canary: Window, baseline: Window | None, criteria: Criteria) -> Decision:
        evidence: dict[str, object] = {"judge": "sequential", "canary": _side(canary),
                                       "baseline": _side(baseline) if baseline is not None else None,
                                       "criteria": asdict(criteria)}
        problem = _invalid(criteria)
        if problem is not None:
            return Decision(Verdict.ERROR, problem, evidence)
        try:
            findings, alone = self._findings(canary, baseline, criteria, evidence)
        except (ArithmeticError, ValueError) as error:  # never raises: the engine holds on Error
            return Decision(Verdict.ERROR, f"the sequential judge could not judge: {error!r}", evidence)
        evidence["rules"] = {f.rule: {"state": f.state, "says": f.says, **f.evidence} for f in findings}
        return _verdict(findings, alone, canary, criteria, evidence)

    def _findings(self, canary: Window, baseline: Window | None, criteria: Criteria,
                  evidence: dict[str, object]) -> tuple[list[Finding], str | None]:
        """Every rule's finding, and why the canary is judged alone (None when it is compared)."""
        rules = tests_on(criteria)
        alpha = criteria.alpha / max(1, len(rules))
        evidence |= {"alpha_per_test": _num(alpha), "tests": rules}
        c = canary.counters
        findings = [p99_guardrail(c, criteria.max_p99, criteria.min_requests)]
        if "error_rate" in rules:
            findings.insert(0, error_rate_guardrail(c, criteria.max_error_rate, alpha))
        alone = ("no baseline" if baseline is None else "the baseline saw no traffic"
                 if not baseline.counters.requests else None)
        if alone is None and baseline is not None:
            b, n = baseline.counters, criteria.min_requests
            if criteria.max_error_rate_increase is not None:
                findings.append(error_rate_increase(c, b, criteria.max_error_rate_increase, alpha, n,
                                                    level=self.likely_level))
            if criteria.max_p99_increase is not None:
                findings.append(p99_increase(c, b, criteria.max_p99_increase, alpha, n,
                                             level=self.likely_level))
        evidence["compared"] = alone is None
        return findings, alone


def _verdict(findings: list[Finding], alone: str | None, canary: Window, criteria: Criteria,
             evidence: dict[str, object]) -> Decision:
    prefix = f"{alone}, guardrails only: " if alone is not None else ""
    failed = [f for f in findings if f.state == FAILED]
    if failed:
        evidence["decided_by"] = failed[0].rule
        return Decision(Verdict.FAILED, prefix + failed[0].says, evidence)
    open_ = [f for f in findings if f.state != WITHIN]
    evidence["decided_by"] = None
    if open_:
        return Decision(Verdict.INCONCLUSIVE, prefix + "not yet shown within limits: "
                        + "; ".join(f.says for f in open_), evidence)
    if canary.counters.requests < max(1, criteria.min_requests):
        says = f"{canary.counters.requests} requests, fewer than the {criteria.min_requests} needed to pass"
        return Decision(Verdict.INCONCLUSIVE, prefix + says, evidence)
    if canary.seconds < criteria.min_soak:
        says = f"within limits, watched {canary.seconds:.0f} s of the {criteria.min_soak:.0f} s soak"
        return Decision(Verdict.INCONCLUSIVE, prefix + says, evidence)
    evidence["decided_by"] = "all within"
    return Decision(Verdict.SUCCESSFUL, prefix + "; ".join(f.says for f in findings), evidence)


class ComparingJudge:
    """The judge a spec gets: `SequentialJudge` where its criteria compare the canary with
    the baseline (an increase is set), `ThresholdJudge`'s fixed limits elsewhere."""

    def __init__(self) -> None:
        self.sequential, self.threshold = SequentialJudge(), ThresholdJudge()

    def judge(self, canary: Window, baseline: Window | None, criteria: Criteria) -> Decision:
        chosen: Judge = self.sequential if criteria.compares else self.threshold
        return chosen.judge(canary, baseline, criteria)
