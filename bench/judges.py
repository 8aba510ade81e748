"""Canary judges on the same simulated traffic: false rollbacks and time to detect.

Every judge watches the same simulated canaries, drawn request by request in simulated time
(nothing sleeps): 50 canary requests a second beside 450 for the baseline (a 10% canary),
each failing with probability 1%, answered in a log-normal time around 20 ms (sigma 0.5,
p99 about 64 ms), counted in the router's histogram (`LATENCY_BOUNDS`). A canary lasts
10 minutes. Three kinds of canary: A/A (the canary is the baseline), +2 points of errors
(3%), and +50 ms on every canary answer. Three more within turnout's tolerances of 1 point
and 25 ms, to count how often each judge rolls back a canary it was told to accept: +0.5
and +1 point of errors, +25 ms.

The judges:
- turnout: `SequentialJudge`, asked every second about the windows since the start, as the
  engine asks at a 1 s gate interval; the first Failed rolls back. A good canary is
  promoted when the judge says Successful at the end (else it holds for a human). One row
  per setting of its tolerances, guardrails at 5% errors and 500 ms, a 2-minute soak; and
  one with the point estimate where the judge has its bound at level 1/2 (a comparison
  fails once the canary is shown worse and its estimate is past the tolerance).
- Flagger-style: every 60 s, fixed thresholds on the last minute (Flagger's `interval: 1m`):
  error rate over 2% (one point above the baseline's), or a p99 over 100 ms by Prometheus'
  `histogram_quantile` (interpolated in its bucket); 5 failed checks roll back
  (`threshold: 5`), fewer promote at the end.
- Kayenta-style: every 60 s, a Mann-Whitney U test (normal approximation, ties and
  continuity corrected) of the canary's per-minute points against the baseline's, for the
  error rate and the p99, at 98% confidence; a metric significantly higher on the canary
  rolls back, none promotes at the end.

Goals: at most 1% false rollbacks, +2 points found in under 30 s, +50 ms in under 60 s.

Usage: .venv/bin/python -m bench.judges [--runs 500] [--quick] [--seed 1] [--baseline-rps 450]
Writes bench/results/judges.json (judges-baselineN.json for another baseline rate) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout.analysis.judge import Criteria, Verdict, Window
from turnout.analysis.sequential import LIKELY_LEVEL, SequentialJudge
from turnout.plan import RevisionSubject
from turnout.routers.base import LATENCY_BOUNDS, Counters

# One minute's (error rate, p99) of the canary, then of the baseline.
Minute = tuple[tuple[float, float], tuple[float, float]]
RESULTS = Path(__file__).resolve().parent / "results" / "judges.json"
DURATION = 600  # seconds of a canary
CANARY_RPS, BASELINE_RPS = 50, 450
BASE_ERRORS, MEDIAN, SIGMA = 0.01, 0.020, 0.5
SCENARIOS: dict[str, tuple[float, float]] = {  # canary's error rate, latency shift
    "A/A": (BASE_ERRORS, 0.0), "+2 pp errors": (BASE_ERRORS + 0.02, 0.0), "+50 ms": (BASE_ERRORS, 0.05),
    "+0.5 pp errors": (BASE_ERRORS + 0.005, 0.0), "+1 pp errors": (BASE_ERRORS + 0.01, 0.0),
    "+25 ms": (BASE_ERRORS, 0.025),
}
WITHIN = ("+0.5 pp errors", "+1 pp errors", "+25 ms")  # within turnout's 1 pp / +25 ms
GUARDRAILS = {"max_error_rate": 0.05, "max_p99": 0.5, "min_requests": 20, "min_soak": 120.0}
TURNOUT: dict[str, tuple[float, float, float | None]] = {
    # row name: (max_error_rate_increase, max_p99_increase, the judge's likely_level)
    "turnout, 1 pp / +25 ms": (0.01, 0.025, LIKELY_LEVEL),
    "turnout, 1 pp / +25 ms, point estimate": (0.01, 0.025, None),
    "turnout, 0.25 pp / +25 ms": (0.0025, 0.025, LIKELY_LEVEL),
    "turnout, 0 pp / +0 ms": (0.0, 0.0, LIKELY_LEVEL),
}


def _cdf(shift: float) -> list[float]:
    """The share of answers at or under each bound: log-normal around MEDIAN, plus `shift`."""
    def below(bound: float) -> float:
        x = bound - shift
        return 0.0 if x <= 0 else 0.5 * math.erfc(-math.log(x / MEDIAN) / (SIGMA * math.sqrt(2.0)))
    return [below(b) for b in LATENCY_BOUNDS]


@dataclass
class Side:
    """One side's cumulative counters, grown one simulated second at a time."""

    rate: int
    error_rate: float
    shift: float
    requests: int = 0
    failures: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    marks: list[tuple[int, int, list[int]]] = field(default_factory=list)  # at each minute

    def __post_init__(self) -> None:
        self.cdf = _cdf(self.shift)
        self.marks.append((0, 0, list(self.latency)))

    def second(self, rng: random.Random) -> None:
        draw, cdf, latency, failures = rng.random, self.cdf, self.latency, 0
        for _ in range(self.rate):
            failures += draw() < self.error_rate
            latency[bisect_left(cdf, draw())] += 1
        self.failures += failures
        self.requests += self.rate

    def window(self, seconds: int, revision: str) -> Window:
        counters = Counters(requests=self.requests, responses_5xx=self.failures, latency=list(self.latency))
        return Window(RevisionSubject(revision=revision), counters, float(seconds))

    def minute(self) -> tuple[float, float]:
        """Mark a minute's end; that minute's error rate and p99 (as Prometheus computes it)."""
        requests, failures, latency = self.marks[-1]
        self.marks.append((self.requests, self.failures, list(self.latency)))
        counts = [now - then for now, then in zip(self.latency, latency, strict=True)]
        return (self.failures - failures) / max(1, self.requests - requests), histogram_quantile(0.99, counts)


def histogram_quantile(q: float, counts: list[int]) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket; the last finite bound for +Inf."""
    total = sum(counts)
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        if seen + count >= rank and count:
            if index == len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            low = LATENCY_BOUNDS[index - 1] if index else 0.0
            return low + (LATENCY_BOUNDS[index] - low) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]


def mann_whitney(canary: list[float], baseline: list[float]) -> tuple[float, float]:
    """Two-sided p-value of the U test (normal approximation) and U minus its mean (> 0: the
    canary's points rank higher)."""
    n1, n2 = len(canary), len(baseline)
    pooled = sorted([(v, 0) for v in canary] + [(v, 1) for v in baseline])
    rank_sum, ties, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        midrank, size = (i + j) / 2 + 1, j - i + 1
        rank_sum += midrank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        ties += size**3 - size
        i = j + 1
    n, shift = n1 + n2, rank_sum - n1 * (n1 + 1) / 2 - n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0, shift
    z = max(0.0, abs(shift) - 0.5) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2.0)), shift


class Turnout:
    interval = 1

    def __init__(self, name: str, increase: float, p99_increase: float, level: float | None) -> None:
        self.name, self.judge = name, SequentialJudge(likely_level=level)
        self.criteria = Criteria(GUARDRAILS["max_error_rate"], GUARDRAILS["max_p99"],
                                 int(GUARDRAILS["min_requests"]), max_error_rate_increase=increase,
                                 max_p99_increase=p99_increase, min_soak=GUARDRAILS["min_soak"])
        self.passed: float | None = None
        self.last = Verdict.INCONCLUSIVE

    def look(self, t: int, canary: Side, baseline: Side, minute: list[Minute]) -> bool:
        decision = self.judge.judge(canary.window(t, "v2"), baseline.window(t, "v1"), self.criteria)
        self.last = decision.verdict
        if decision.passed and self.passed is None:
            self.passed = t
        return decision.failed

    def promoted(self) -> bool:
        return self.last is Verdict.SUCCESSFUL


class Flagger:
    interval, name = 60, "Flagger-style (1m, 5 checks)"

    def __init__(self) -> None:
        self.failed_checks = 0

    def look(self, t: int, canary: Side, baseline: Side, minute: list[Minute]) -> bool:
        rate, p99 = minute[-1][0]
        self.failed_checks += rate > 0.02 or p99 > 0.1
        return self.failed_checks >= 5

    def promoted(self) -> bool:
        return True  # reached the end without five failed checks

    passed = None


class Kayenta:
    interval, name = 60, "Kayenta-style (U test, 98%)"

    def look(self, t: int, canary: Side, baseline: Side, minute: list[Minute]) -> bool:
        for metric in (0, 1):
            p, shift = mann_whitney([m[0][metric] for m in minute], [m[1][metric] for m in minute])
            if p < 0.02 and shift > 0:
                return True
        return False

    def promoted(self) -> bool:
        return True

    passed = None


def judges() -> list[Any]:
    return [*(Turnout(name, *tolerances) for name, tolerances in TURNOUT.items()), Flagger(), Kayenta()]


def simulate(scenario: str, seed: int, run: int,
             baseline_rps: int = BASELINE_RPS) -> dict[str, dict[str, Any]]:
    """One canary of `scenario` under every judge: when each rolled back, whether it promoted."""
    error_rate, shift = SCENARIOS[scenario]
    rng = random.Random(f"{seed}/{scenario}/{run}")
    canary, baseline = Side(CANARY_RPS, error_rate, shift), Side(baseline_rps, BASE_ERRORS, 0.0)
    watching, rolled, minutes = judges(), dict[str, int](), list[Minute]()
    for t in range(1, DURATION + 1):
        canary.second(rng)
        baseline.second(rng)
        if t % 60 == 0:
            minutes.append((canary.minute(), baseline.minute()))
        for judge in watching:
            due = judge.name not in rolled and t % judge.interval == 0
            if due and judge.look(t, canary, baseline, minutes):
                rolled[judge.name] = t
        if len(rolled) == len(watching):
            break
    return {j.name: {"rollback": rolled.get(j.name), "promoted": j.name not in rolled and j.promoted(),
                     "passed": j.passed} for j in watching}


def _median(values: list[float]) -> float | None:
    middle = statistics.median(values) if values else math.inf
    return None if math.isinf(middle) else middle


def summarise(outcomes: dict[str, list[dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    rows = []
    for name in (j.name for j in judges()):
        good = [run[name] for run in outcomes["A/A"]]
        row: dict[str, Any] = {"judge": name, "runs": len(good),
                               "false_rollbacks": sum(o["rollback"] is not None for o in good),
                               "promoted": sum(o["promoted"] for o in good),
                               "median_first_pass_s": _median([o["passed"] or math.inf for o in good])}
        for scenario, key in (("+2 pp errors", "errors"), ("+50 ms", "latency")):
            times = [run[name]["rollback"] for run in outcomes[scenario]]
            row[f"{key}_median_s"] = _median([math.inf if t is None else t for t in times])
            row[f"{key}_found"] = sum(t is not None for t in times)
            row[f"{key}_runs"] = len(times)
        row["within"] = {scenario: _within(name, outcomes[scenario]) for scenario in WITHIN
                         if scenario in outcomes}
        rows.append(row)
    return rows


def _within(name: str, runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A canary within the tolerances: how many `name` rolled back (and when), how many it promoted."""
    times = [run[name]["rollback"] for run in runs if run[name]["rollback"] is not None]
    return {"runs": len(runs), "rolled_back": len(times), "median_rollback_s": _median(times),
            "promoted": sum(run[name]["promoted"] for run in runs)}


def _seconds(value: float | None) -> str:
    return "not found" if value is None else f"{value:.0f} s"


def _passed(row: dict[str, Any]) -> str:
    if not row["judge"].startswith("turnout"):
        return f"at the end, {DURATION} s"
    return "never" if row["median_first_pass_s"] is None else f"{row['median_first_pass_s']:.0f} s"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| judge | false rollbacks (A/A) | A/A promoted (median first Successful) | "
             "+2 pp errors: median time to roll back "
             "(rolled back) | +50 ms: median time to roll back (rolled back) |", "|---|---|---|---|---|"]
    for r in rows:
        n = r["runs"]
        lines.append(
            f"| {r['judge']} | {r['false_rollbacks']}/{n} ({r['false_rollbacks'] / n:.1%}) | "
            f"{r['promoted'] / n:.0%} ({_passed(r)}) | {_seconds(r['errors_median_s'])} "
            f"({r['errors_found']}/{r['errors_runs']}) | {_seconds(r['latency_median_s'])} "
            f"({r['latency_found']}/{r['latency_runs']}) |")
    return "\n".join(lines + _within_table(rows))


def _rolled(w: dict[str, Any]) -> str:
    share = f"{w['rolled_back']}/{w['runs']} ({w['rolled_back'] / w['runs']:.1%}"
    return share + (f", median {w['median_rollback_s']:.0f} s)" if w["rolled_back"] else ")")


def _within_table(rows: list[dict[str, Any]]) -> list[str]:
    """Canaries within turnout's 1 pp / +25 ms: rolled back (median time), promoted."""
    scenarios = list(rows[0]["within"])
    if not scenarios:
        return []
    lines = ["", "| judge | " + " | ".join(f"{s}: rolled back | {s}: promoted" for s in scenarios) + " |",
             "|---|" + "---|---|" * len(scenarios)]
    for r in rows:
        cells = [f"{_rolled(w)} | {w['promoted'] / w['runs']:.0%}" for w in r["within"].values()]
        lines.append(f"| {r['judge']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="canaries per kind (default 500)")
    parser.add_argument("--quick", action="store_true", help="50 canaries per kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-rps", type=int, default=BASELINE_RPS,
                        help=f"baseline requests a second (default {BASELINE_RPS})")
    args = parser.parse_args()
    runs = 50 if args.quick else args.runs
    if runs < 1 or args.baseline_rps < 1:
        parser.error("--runs and --baseline-rps must be at least 1")
    started, outcomes = time.monotonic(), {}
    for scenario in SCENARIOS:
        outcomes[scenario] = [simulate(scenario, args.seed, run, args.baseline_rps) for run in range(runs)]
        print(f"{scenario}: {runs} canaries simulated ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    rows = summarise(outcomes)
    print(table(rows))
    print(f"\n{runs} canaries per kind, {CANARY_RPS} canary and {args.baseline_rps} baseline requests a "
          f"second, seed {args.seed}, {time.monotonic() - started:.0f} s; goals: "
          "at most 1% false rollbacks, +2 pp in under 30 s, +50 ms in under 60 s")
    results = RESULTS if args.baseline_rps == BASELINE_RPS else RESULTS.with_stem(
        f"judges-baseline{args.baseline_rps}")
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({
        "runs": runs, "seed": args.seed, "duration_s": DURATION, "canary_rps": CANARY_RPS,
        "baseline_rps": args.baseline_rps, "latency_bounds": LATENCY_BOUNDS, "guardrails": GUARDRAILS,
        "turnout_tolerances": TURNOUT, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
