"""`turnout demo --faults`: faulty versions deployed with each strategy, and what users met.

For each fault (a start crash, a version never healthy, a hang, a share of 5xx, extra
latency, a crash after some requests) and each strategy, the demo deploys a version of
the bundled app that has the fault, through the real `turnout deploy` command, under a
constant-rate load from many users, and records what turnout did (exit code, whether
and when it rolled back) and how many users and requests met the fault. For the feature
toggle the fault sits behind the flag (`DEMO_FEATURE_*`) where it can: a process that
cannot start or never gets healthy fails before any flag is read.

The settings are chosen so that every run ends in seconds: a short health deadline, a
gate that looks every half second with a 2% error rate and a 250 ms p99 as limits, the same
limits judged throughout every deployment (`strategy.analysis`, which a deployment must
pass before it succeeds), a router that gives up on a silent instance after a second (so a
hang shows as 504s), short drains. A deployment that a gate holds for a human
(Inconclusive at the end of a pause) is aborted by the demo at once and shown as held;
every deployment and every load is bounded in time. Before the next run, a version that
was left serving with a fault (or, for the toggle, its dark code) is replaced by a clean
one with a big bang, outside the load.

This module is the catalogue and the runs; the table's rows and how a run's samples are
judged are `turnout.demo.faults_report`, the `turnout` commands run as child processes
`turnout.demo.faults_cli`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from turnout.demo.faults_cli import Deployed, turnout
from turnout.demo.faults_report import FaultRow, judge_run
from turnout.demo.load import Load
from turnout.demo.runner import FLAG, free_port
from turnout.errors import TurnoutError
from turnout.routers.proxy.balancer import bucket_ends, bucket_of

USERS = 200
RATE = 200.0
DEPLOY_LIMIT_S = 90.0  # a deploy command still running after this is interrupted (it rolls back)
SETTLE_S = 1.0  # the load goes on this long after the deploy command ends


@dataclass(frozen=True)
class Fault:
    """A way a version can be broken: its variables for every request, and behind the flag."""

    name: str
    title: str
    env: dict[str, str]
    flagged: dict[str, str] | None = None  # the same fault on the new code path only (None: cannot be)
    slow_s: float | None = None  # an answer of the faulty code slower than this shows the fault


FAULTS = (
    Fault("start", "start crash", {"DEMO_FAIL": "start"}),
    Fault("health", "never healthy", {"DEMO_FAIL": "health"}),
    Fault("hang", "hang", {"DEMO_FAIL": "hang"}, {"DEMO_FEATURE_FAIL": "hang"}),
    Fault("errors", "30% 5xx", {"DEMO_ERROR_RATE": "0.3"}, {"DEMO_FEATURE_ERROR_RATE": "0.3"}),
    Fault("latency", "+300 ms", {"DEMO_LATENCY_MS": "300"}, {"DEMO_FEATURE_LATENCY_MS": "300"}, slow_s=0.2),
    Fault("crash", "crash after 10", {"DEMO_CRASH_AFTER": "10"}, {"DEMO_FEATURE_CRASH_AFTER": "10"}),
)
FAULT_NAMES = tuple(f.name for f in FAULTS)

NAMED = [f"u{i}" for i in range(1, 6)]  # the toggle's first ramp step
GATE = {"interval": "500ms", "min_requests": 10, "max_error_rate": "2%", "max_p99": "250ms"}
# Judged throughout every deployment, as the SLO: a strategy without pauses (big bang,
# rolling, blue-green) has no other look at live traffic, and succeeds only once it passed.
ANALYSIS = {**GATE, "min_requests": 20}
PREVIEW_LIMITS = {k: v for k, v in ANALYSIS.items() if k != "interval"}
STRATEGIES: dict[str, dict[str, object]] = {
    "big-bang": {"kind": "big-bang", "analysis": ANALYSIS},
    "rolling": {"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "analysis": ANALYSIS},
    # A smoke test of the main path on the green fleet, as a user would write one, and a
    # short load on it that the analysis before the switch judges with the live limits.
    "blue-green": {"kind": "blue-green", "rollback_window": "1s", "analysis": ANALYSIS,
                   "tests": [{"http": "/"}, {"command": [sys.executable, "-m", "turnout.demo.preview_load",
                                                         "--requests", "60", "--rate", "100"]}],
                   "preview_analysis": {**PREVIEW_LIMITS, "duration": "0s"}},
    "canary": {"kind": "canary", "steps": [{"weight": 10}, {"pause": "3s"}, {"weight": 50}, {"pause": "2s"}],
               "gate": GATE, "analysis": ANALYSIS},
    "feature-toggle": {"kind": "feature-toggle", "flag": FLAG, "ship": "rolling",
                       "ramp": [{"users": NAMED}, {"pause": "3s"}, {"percent": 20}, {"pause": "2s"}],
                       "gate": {**GATE, "min_requests": 5}, "analysis": {**ANALYSIS, "min_requests": 5}},
}
LOAD_USERS = [f"u{i}" for i in range(USERS)]  # the user keys the load sends


def first_step(strategy: str) -> tuple[float | None, int | None]:
    """The share of traffic the canary's or the toggle's first step gave the new version or
    code path, and how many of the load's users it took (None, None for the others)."""
    if strategy == "canary":
        steps = STRATEGIES["canary"]["steps"]
        assert isinstance(steps, list)
        weight = int(steps[0]["weight"])
        end = bucket_ends([weight, 100 - weight])[0]  # the router's: the canary's buckets come first
        return weight / 100, sum(bucket_of(user) < end for user in LOAD_USERS)
    if strategy == "feature-toggle":
        return len(NAMED) / USERS, len(NAMED)
    return None, None


def write_spec(folder: Path, port: int) -> Path:
    spec = {
        "service": "faults",
        "listen": f"127.0.0.1:{port}",
        "instances": 3,
        "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}",
                            "--drain-timeout", "1"], "grace": "2s"},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "2s"},
        "routing": {"user_key": {"header": "X-User-Id"}, "preview_listen": f"127.0.0.1:{free_port()}",
                    "drain_timeout": "2s", "timeouts": {"response": "1s"}},
    }
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def choose(only: tuple[str, ...], strategies: tuple[str, ...]) -> list[tuple[Fault, str]]:
    """The (fault, strategy) pairs to run; ValueError names an unknown fault or strategy."""
    for name in only:
        if name not in FAULT_NAMES:
            raise ValueError(f"--only: no fault {name!r}; expected one of {', '.join(FAULT_NAMES)}")
    for name in strategies:
        if name not in STRATEGIES:
            raise ValueError(f"--strategy: no strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return [(fault, name) for fault in FAULTS if not only or fault.name in only
            for name in STRATEGIES if not strategies or name in strategies]


def overrides(fault: Fault, strategy: str) -> list[str]:
    """`--set` arguments for deploying `fault` with `strategy`."""
    settings = STRATEGIES[strategy]
    args = [f"strategy.{key}={json.dumps(value)}" for key, value in settings.items()]
    env = fault.env
    if strategy == "feature-toggle":
        env = {"DEMO_FEATURE": FLAG, **(fault.flagged if fault.flagged is not None else fault.env)}
    args += [f"run.env.{name}={json.dumps(value)}" for name, value in env.items()]
    return [part for arg in args for part in ("--set", arg)]


@dataclass
class FaultsDemo:
    path: Path
    port: int
    rate: float = RATE
    quiet: bool = False
    counter: int = 1
    clean: bool = True  # the version serving has no fault

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def version(self, label: str) -> str:
        self.counter += 1
        return f"v{self.counter}-{label}"

    async def restore(self) -> None:
        """A clean version serves again (a big bang, outside the load)."""
        version = self.version("clean")
        deployed = await turnout(self.path, "deploy", version, "--strategy", "big-bang")
        if deployed.code != 0:
            raise TurnoutError(f"could not deploy the clean {version}: {deployed.tail()}")
        self.clean = True

    async def run(self, fault: Fault, strategy: str) -> FaultRow:
        if not self.clean:
            await self.restore()
        version = self.version(fault.name)
        self.say(f"{fault.title} with {strategy}: deploying {version} under {self.rate:g} req/s")
        url = f"http://127.0.0.1:{self.port}/"
        async with Load(url, rate=self.rate, users=USERS, connections=64, timeout=3.0,
                        max_seconds=DEPLOY_LIMIT_S + 40.0) as load:
            deployed = await turnout(self.path, "deploy", version, "--json", *overrides(fault, strategy),
                                     limit=DEPLOY_LIMIT_S, abort_when_held=True)
            ended = time.monotonic()
            await asyncio.sleep(SETTLE_S)
        self.clean = deployed.restored  # else the faulty version (or its dark code) may serve
        share, users = first_step(strategy)
        row = judge_run(fault.name, fault.title, strategy, deployed, load.samples,
                        faulty={version, f"{version}+{FLAG}"}, slow_s=fault.slow_s, ended=ended,
                        first_share=share, first_users=users)
        self.say(f"    {row.did}; {row.users_met} users and {row.requests_met} requests met the fault")
        return row


async def run_faults(
    *, only: tuple[str, ...] = (), strategies: tuple[str, ...] = (), rate: float = RATE, quiet: bool = False
) -> list[FaultRow]:
    """Deploy each chosen fault with each chosen strategy; one row per pair, in catalogue order."""
    pairs = choose(only, strategies)
    rows: list[FaultRow] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="turnout-faults-") as tmp:
        port = free_port()
        demo = FaultsDemo(write_spec(Path(tmp), port), port, rate, quiet)
        try:
            first = await turnout(demo.path, "deploy", "v1")
            if first.code != 0:
                raise TurnoutError(f"the first release failed: {first.tail()}")
            for fault, strategy in pairs:
                rows.append(await demo.run(fault, strategy))
        finally:
            await turnout(demo.path, "down")
    demo.say(f"{len(rows)} runs in {time.monotonic() - started:.0f}s")
    return rows


__all__ = ["FAULTS", "FAULT_NAMES", "STRATEGIES", "Deployed", "Fault", "FaultRow", "choose", "run_faults"]
