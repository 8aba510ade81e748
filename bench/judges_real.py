"""Real canaries against the simulation of `bench/judges.py`: does the simulation hold?

Deploys versions of the bundled demo app through the real `turnout` command (local
platform, builtin router, SQLite state in a temporary folder) as canaries at weight 50
under a constant open-loop load of 100 requests a second on 127.0.0.1 (about 50 a second
for the canary, as in the simulation), one instance on each side. Every request asks the
app for `/slow?ms=X`, X drawn from the simulation's latency (log-normal around 20 ms,
sigma 0.5), so both sides answer like the simulated ones; the stable version and every
canary fail 1% of their requests (`DEMO_ERROR_RATE=0.01`). Three kinds of canary, taken in
turn: A/A (the same app), +2 points of errors (`DEMO_ERROR_RATE=0.03`) and +50 ms on every
answer (`DEMO_LATENCY_MS=50`).

The canary's one pause is watched by the gate that `bench/judges.py` gives turnout's
judge (a 1 s interval, tolerances of 1 point and 25 ms, alpha 0.01, guardrails at 5%
errors and 500 ms, 20 requests) for `--horizon` seconds (60 by default), with a soak of
the horizon less 5 s so that a good canary can pass within it. A canary the gate fails is
rolled back by turnout; one it passes is promoted; one still Inconclusive at the end is
held, and this bench interrupts it at once (it is then rolled back, counted as held). For
each run, from the deployment's stored events (`turnout history --events ID --json`): the
outcome, the time from the canary's first traffic (the `traffic` event that gave it its
weight) to the rollback, the judge's own window at its Failed decision, and the rule that
decided; from the load: the requests the canary served and their 5xx.

Then the same canaries simulated with `bench/judges.py`'s `Side` and `Turnout` (50
requests a second each side, the same criteria, rates and horizon), and one table of both.

Usage: .venv/bin/python -m bench.judges_real [--runs 20] [--json PATH] [--horizon 60]
       [--sim-runs 500] [--only A/A --only "+2 pp errors" --only "+50 ms"]
Writes bench/results/judges_real.json unless told another path, and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from bench import judges
from bench.cli import cli_json

from turnout.analysis.judge import Criteria
from turnout.analysis.sequential import LIKELY_LEVEL
from turnout.demo.faults_cli import Deployed, turnout
from turnout.demo.load import Load, Sample
from turnout.demo.runner import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "judges_real.json"
RATE, WEIGHT = 100.0, 50  # requests a second on the router; the canary's weight
HORIZON_S = 60  # how long the canary's pause is watched
SOAK_MARGIN_S = 5  # min_soak is the horizon less this: the pause's last look may come a hair early
SETTLE_S = 1.0  # the load goes on this long after the deploy command ends
DEPLOY_SLACK_S = 60.0  # a deploy command still running this long after its horizon is interrupted
SCENARIOS: dict[str, dict[str, str]] = {  # the canary's variables beside the spec's 1% of errors
    "A/A": {}, "+2 pp errors": {"DEMO_ERROR_RATE": "0.03"}, "+50 ms": {"DEMO_LATENCY_MS": "50"},
}
# judges.py's turnout row "1 pp / +25 ms" and its guardrails, as numbers (seconds, shares).
LIMITS: dict[str, float] = {"max_error_rate": judges.GUARDRAILS["max_error_rate"],
                            "max_p99": judges.GUARDRAILS["max_p99"],
                            "min_requests": judges.GUARDRAILS["min_requests"],
                            "max_error_rate_increase": 0.01, "max_p99_increase": 0.025, "alpha": 0.01}


def criteria(horizon: int) -> Criteria:
    """The judge's criteria, the same for the real gate and the simulated one."""
    return Criteria(LIMITS["max_error_rate"], LIMITS["max_p99"], int(LIMITS["min_requests"]),
                    max_error_rate_increase=LIMITS["max_error_rate_increase"],
                    max_p99_increase=LIMITS["max_p99_increase"],
                    min_soak=float(horizon - SOAK_MARGIN_S), alpha=LIMITS["alpha"])


def gate(horizon: int) -> dict[str, Any]:
    """`strategy.gate` of the spec: `criteria(horizon)`, looked at every second."""
    c = criteria(horizon)
    return {"interval": 1.0, "max_error_rate": c.max_error_rate, "max_p99": c.max_p99,
            "min_requests": c.min_requests, "max_error_rate_increase": c.max_error_rate_increase,
            "max_p99_increase": c.max_p99_increase, "min_soak": c.min_soak, "alpha": c.alpha}


def delays_ms(count: int, rng: random.Random) -> list[float]:
    """`count` answer times in ms, independent draws from the simulation's log-normal (median
    `judges.MEDIAN`, sigma `judges.SIGMA`): one per request of a run, new for every run."""
    return [round(judges.MEDIAN * 1000.0 * math.exp(rng.gauss(0.0, judges.SIGMA)), 2) for _ in range(count)]


class DelayLoad(Load):
    """The demo's load, each request asking `/slow?ms=X` with X the next of `delays`."""

    def __init__(self, port: int, delays: Sequence[float], **bounds: Any) -> None:
        super().__init__(f"http://127.0.0.1:{port}/slow", users=len(delays), **bounds)
        head = f"HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        self._raw = [f"GET /slow?ms={d} {head}X-User-Id: u{i}\r\n\r\n".encode() for i, d in enumerate(delays)]


def write_spec(folder: Path, port: int, horizon: int) -> Path:
    spec = {
        "service": "judges-real",
        "listen": f"127.0.0.1:{port}",
        "instances": 1,
        "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}",
                            "--drain-timeout", "1"], "grace": "2s",
                "env": {"DEMO_ERROR_RATE": str(judges.BASE_ERRORS)}},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "5s"},
        "routing": {"drain_timeout": "2s", "timeouts": {"response": "2s"}},
        "strategy": {"kind": "canary", "steps": [{"weight": WEIGHT}, {"pause": f"{horizon}s"}],
                     "gate": gate(horizon)},
    }
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_events(events: Sequence[dict[str, Any]], code: int | None, held: bool) -> dict[str, Any]:
    """What the stored events of one canary say: its outcome ("rolled back" by the gate,
    "promoted", "held" at the end of its pause, else "error"), when it got traffic, when and
    why it was rolled back, and the judge's window at that moment."""
    first = next((e for e in events if e["kind"] == "traffic" and _split(e)), None)
    failed = next((e for e in events if e["kind"] == "gate" and e["data"].get("verdict") == "Failed"), None)
    paused = any(e["kind"] == "paused" for e in events)
    rollback = next((e for e in events if e["kind"] == "rollback"), None)
    if failed is not None and rollback is not None and not paused:
        outcome = "rolled back"
    elif paused or held:
        outcome = "held"
    else:
        outcome = "promoted" if code == 0 else "error"
    decided = next((e["at"] for e in events if e["kind"] in ("paused", "rollback")), math.inf)
    looks = sum(e["kind"] == "gate" and e["at"] <= decided for e in events)
    evidence = failed["data"].get("evidence", {}) if failed is not None and outcome == "rolled back" else {}
    detect = (rollback["at"] - first["at"]) if outcome == "rolled back" and first and rollback else None
    end = next((e["at"] for e in events if first and e["at"] > first["at"]
                and e["kind"] in ("traffic", "paused", "rollback")), None)
    last = next((e for e in reversed(events) if e["kind"] == "gate" and e["at"] <= decided), None)
    return {"outcome": outcome, "traffic_at": first["at"] if first else None, "judged_until": end,
            "detect_s": detect,
            "judge_s": evidence.get("canary", {}).get("seconds"), "decided_by": evidence.get("decided_by"),
            "judged_requests": evidence.get("canary", {}).get("requests"), "looks": looks,
            "last_gate": last["message"][:400] if last else None}


def _split(event: dict[str, Any]) -> bool:
    """A `traffic` event that sends requests to two revisions or more (the canary's first)."""
    weights: dict[str, int] = event["data"].get("weights", {})
    return sum(weight > 0 for weight in weights.values()) > 1


def served(samples: Iterable[Sample], version: str, since: float, until: float) -> dict[str, int]:
    """The requests sent between `since` and `until` (the samples' clock) that each side
    answered, the canary being `version`, and how many of them failed (5xx, no answer)."""
    window = [s for s in samples if since <= s.sent <= until]
    ours = [s for s in window if s.version == version]
    theirs = [s for s in window if s.version != version]
    return {"canary_requests": len(ours), "canary_failed": sum(s.failed for s in ours),
            "baseline_requests": len(theirs), "baseline_failed": sum(s.failed for s in theirs)}


async def stored_events(spec: Path, deployment: int) -> list[dict[str, Any]]:
    """`turnout history --events ID --json`: every stored event of one deployment."""
    answer = await cli_json(spec, "history", "--events", str(deployment), "--json",
                            name=f"events-{deployment}.json")
    events: list[dict[str, Any]] = answer["events"]
    return events


class Bench:
    """One service, deployed again and again as canaries of each kind."""

    def __init__(self, folder: Path, horizon: int, seed: int) -> None:
        self.port, self.horizon, self.count = free_port(), horizon, 1
        self.spec = write_spec(folder, self.port, horizon)
        self.seed = seed

    async def first(self) -> None:
        deployed = await turnout(self.spec, "deploy", "v1", "--strategy", "big-bang")
        if deployed.code != 0:
            raise RuntimeError(f"the first release failed: {deployed.tail()}")

    async def run(self, scenario: str) -> dict[str, Any]:
        self.count += 1
        version = f"v{self.count}"
        args = [part for name, value in SCENARIOS[scenario].items()
                for part in ("--set", f"run.env.{name}={json.dumps(value)}")]
        seconds = self.horizon + DEPLOY_SLACK_S
        requests = int(RATE * (seconds + 30.0))  # the load's bounds: count and time
        delays = delays_ms(requests, random.Random(f"load/{self.seed}/{version}"))
        async with DelayLoad(self.port, delays, rate=RATE, connections=64, timeout=3.0,
                             max_seconds=seconds + 30.0, max_requests=requests) as load:
            deployed = await turnout(self.spec, "deploy", version, "--json", *args, limit=seconds,
                                     abort_when_held=True)
            await asyncio.sleep(SETTLE_S)
        record: dict[str, Any] = {"scenario": scenario, "version": version, "exit_code": deployed.code}
        deployment = deployed.outcome.get("deployment")
        try:
            if deployment is None:
                raise RuntimeError(f"no outcome from turnout deploy: {deployed.tail()}")
            events = await stored_events(self.spec, int(deployment))
        except RuntimeError as exc:  # counted as an error, the next runs go on from a clean version
            await self.restore()
            return record | {"outcome": "error", "tail": str(exc)}
        record |= read_events(events, deployed.code, deployed.held)
        if record["traffic_at"] is not None and record["judged_until"] is not None:
            offset = (load.started or 0.0) - (load.started_wall or 0.0)  # wall clock to the samples'
            record |= served(load.samples, version, record["traffic_at"] + offset,
                             record["judged_until"] + offset)
        if _left_faulty(record, deployed):
            await self.restore()
        return record

    async def restore(self) -> None:
        """A clean version serves again (a big bang, outside the load)."""
        self.count += 1
        deployed = await turnout(self.spec, "deploy", f"v{self.count}", "--strategy", "big-bang")
        if deployed.code != 0:
            raise RuntimeError(f"could not restore a clean version: {deployed.tail()}")


def _left_faulty(record: dict[str, Any], deployed: Deployed) -> bool:
    """Whether a version other than a clean one may serve now: a faulty canary promoted, or a
    command that ended neither promoted (0) nor rolled back (3)."""
    if deployed.code not in (0, 3):
        return True
    return bool(record["scenario"] != "A/A" and record["outcome"] == "promoted")


async def run_real(runs: int, horizon: int, scenarios: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """`runs` canaries of each scenario, taken in turn so that a busier minute hits them all."""
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="turnout-judges-") as tmp:
        bench = Bench(Path(tmp), horizon, seed)
        try:
            await bench.first()
            for index in range(runs):
                for scenario in scenarios:
                    record = await bench.run(scenario)
                    records.append(record)
                    print(f"[{time.monotonic() - started:5.0f} s] {scenario} #{index + 1}: "
                          f"{_describe(record)}", file=sys.stderr, flush=True)
        finally:
            await turnout(bench.spec, "down")
    return records


def _describe(record: dict[str, Any]) -> str:
    detect = record.get("detect_s")
    when = f" after {detect:.1f} s ({record.get('decided_by')})" if detect is not None else ""
    return (f"{record['outcome']}{when}; canary served {record.get('canary_requests', 0)} "
            f"({record.get('canary_failed', 0)} failed)")


def simulate(scenario: str, horizon: int, seed: int, run: int) -> dict[str, Any]:
    """One canary of `scenario` in `bench/judges.py`'s simulation, 50 requests a second each
    side, judged every simulated second for `horizon` seconds."""
    error_rate, shift = judges.SCENARIOS[scenario]
    return twin(error_rate, shift, horizon, random.Random(f"real/{seed}/{scenario}/{run}"))


def twin(error_rate: float, shift: float, horizon: int, rng: random.Random) -> dict[str, Any]:
    """A simulated canary failing `error_rate` of its requests, `shift` seconds slower than
    its baseline: rolled back (and when), promoted or held at the horizon."""
    rps = round(RATE * WEIGHT / 100)
    canary = judges.Side(rps, error_rate, shift)
    baseline = judges.Side(round(RATE) - rps, judges.BASE_ERRORS, 0.0)
    judge = judges.Turnout("turnout", LIMITS["max_error_rate_increase"], LIMITS["max_p99_increase"],
                           LIKELY_LEVEL)
    judge.criteria = criteria(horizon)
    for t in range(1, horizon + 1):
        canary.second(rng)
        baseline.second(rng)
        if judge.look(t, canary, baseline, []):
            return {"outcome": "rolled back", "detect_s": float(t), "canary_requests": canary.requests}
    return {"outcome": "promoted" if judge.promoted() else "held", "detect_s": None,
            "canary_requests": canary.requests}


def summarise(records: Sequence[dict[str, Any]], scenario: str) -> dict[str, Any]:
    """Outcomes of one scenario's runs, and their times to roll back: median, quartiles, range."""
    ours = [r for r in records if r["scenario"] == scenario]
    times = sorted(r["detect_s"] for r in ours if r["detect_s"] is not None)
    outcomes = {k: sum(r["outcome"] == k for r in ours) for k in ("rolled back", "promoted", "held", "error")}
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"runs": len(ours), **outcomes, "times_s": times,
            "median_s": statistics.median(times) if times else None,
            "q1_s": quartiles[0] if times else None, "q3_s": quartiles[-1] if times else None,
            "min_s": times[0] if times else None, "max_s": times[-1] if times else None,
            "canary_requests_median": statistics.median([r.get("canary_requests", 0) for r in ours])
            if ours else None, **_rates(ours)}


def _rates(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The error rates the load met on each side while the canaries served (real runs only),
    and the judge's median window at its Failed decision."""
    out: dict[str, float] = {}
    for side in ("canary", "baseline"):
        counted = [r for r in records if f"{side}_failed" in r]
        requests = sum(r[f"{side}_requests"] for r in counted)
        if requests:
            out[f"{side}_error_rate"] = round(sum(r[f"{side}_failed"] for r in counted) / requests, 5)
    windows = [r["judge_s"] for r in records if r.get("judge_s") is not None]
    if windows:
        out["judge_window_median_s"] = statistics.median(windows)
    return out


def _times(row: dict[str, Any]) -> str:
    if row["median_s"] is None:
        return "none rolled back"
    return (f"{row['median_s']:.1f} s (quartiles {row['q1_s']:.1f}-{row['q3_s']:.1f}, "
            f"range {row['min_s']:.1f}-{row['max_s']:.1f})")


def table(real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]], horizon: int) -> str:
    """One line per (scenario, real or simulated): outcomes and times to roll back."""
    lines = ["| canary | runs | rolled back | promoted | held | time from first traffic to rollback "
             "(median, quartiles, range) | canary requests (median) |", "|---|---|---|---|---|---|---|"]
    for scenario, measured in real.items():
        for label, row in (("real", measured), ("simulated", sim[scenario])):
            n, back = row["runs"], row["rolled back"]
            lines.append(f"| {scenario}, {label} | {n} | {back} ({back / n:.0%}) | {row['promoted']} | "
                         f"{row['held']} | {_times(row)} | {row['canary_requests_median']:.0f} |")
    lines.append(f"\nEach canary watched for at most {horizon} s (min_soak {horizon - SOAK_MARGIN_S} s); "
                 "real times from the stored events, simulated ones are the look (whole seconds).")
    return "\n".join(lines)


def compare(real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per scenario with rollbacks on both sides: the U test's two-sided p-value of real
    against simulated times (`judges.mann_whitney`) and the median's difference."""
    out: dict[str, Any] = {}
    for scenario, row in real.items():
        if row["times_s"] and sim[scenario]["times_s"]:
            p, _ = judges.mann_whitney(row["times_s"], sim[scenario]["times_s"])
            out[scenario] = {"u_test_p": round(p, 4), "median_real_minus_sim_s":
                             round(row["median_s"] - sim[scenario]["median_s"], 2)}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="real canaries of each kind (default 20)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--horizon", type=int, default=HORIZON_S, help="seconds a canary is watched")
    parser.add_argument("--sim-runs", type=int, default=500, help="simulated canaries of each kind")
    parser.add_argument("--seed", type=int, default=1, help="the latency draws' and the simulation's seed")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="only these kinds")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.sim_runs < 1 or args.horizon <= SOAK_MARGIN_S:
        parser.error(f"--runs and --sim-runs must be at least 1, --horizon over {SOAK_MARGIN_S}")
    scenarios = args.only or list(SCENARIOS)
    started, load_before = time.monotonic(), os.getloadavg()
    records = asyncio.run(run_real(args.runs, args.horizon, scenarios, args.seed))
    real_s = time.monotonic() - started
    simulated = [{"scenario": s, **simulate(s, args.horizon, args.seed, i)}
                 for s in scenarios for i in range(args.sim_runs)]
    real = {s: summarise(records, s) for s in scenarios}
    sim = {s: summarise(simulated, s) for s in scenarios}
    print(table(real, sim, args.horizon))
    tests = compare(real, sim)
    print(f"\nreal runs took {real_s:.0f} s; U test of real against simulated times: {tests}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "runs": args.runs, "sim_runs": args.sim_runs, "seed": args.seed, "horizon_s": args.horizon,
        "rate": RATE, "weight": WEIGHT, "criteria": gate(args.horizon), "base_errors": judges.BASE_ERRORS,
        "latency": {"median_s": judges.MEDIAN, "sigma": judges.SIGMA}, "real_seconds": round(real_s),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "real": real, "simulated": sim, "comparison": tests, "records": records}, indent=2))


if __name__ == "__main__":
    main()
