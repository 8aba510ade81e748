"""`turnout demo`: a sample service under live load, deployed with each strategy in turn.

The demo writes a spec for the bundled app into a temporary folder, deploys v1, then
for each strategy deploys the next version while a constant-rate load records every
response, and measures what a user would have seen: failed requests, requests the
load had to send twice because a kept-alive connection was closed under them, the
longest time without a successful response, and how many users met the new version
before it took all traffic.

With `router="haproxy"` the same spec names HAProxy as its router (turnout writes its
configuration, starts it and steers it); the feature toggle is left out then, with a line
saying why (`HAPROXY_TOGGLE`): HAProxy evaluates no flags per request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from turnout.demo.load import Load
from turnout.engine.events import Event
from turnout.model import Revision
from turnout.service import Session

FLAG = "new-checkout"  # the demo app takes its new code path where the router says this flag is on
STRATEGIES: dict[str, dict[str, object]] = {
    "big-bang": {"kind": "big-bang"},
    "rolling": {"kind": "rolling", "max_surge": 1, "max_unavailable": 0},
    "blue-green": {"kind": "blue-green", "tests": [{"http": "/healthz"}], "rollback_window": "10s"},
    # A gate that ends a pause Inconclusive holds the deployment for a human, so each first pause
    # is long enough for min_requests at 100 req/s over 200 users: the canary's 10% is 25 users
    # (25 requests in 2s), the five named users of the ramp get 10 requests in 4s.
    "canary": {"kind": "canary", "steps": [{"weight": 10}, {"pause": "2s"}, {"weight": 50}, {"pause": "2s"}],
               "gate": {"interval": "1s", "min_requests": 10}},
    "feature-toggle": {"kind": "feature-toggle", "flag": FLAG, "ship": "rolling",
                       "ramp": [{"users": ["u1", "u2", "u3", "u4", "u5"]}, {"pause": "4s"}, {"percent": 20},
                                {"pause": "2s"}],
                       "gate": {"interval": "500ms", "min_requests": 5}},
}
HAPROXY_TOGGLE = (
    "feature-toggle left out: HAProxy does not evaluate flags per request, so there the app "
    "evaluates the flag (`strategy.evaluated_by: app`, its SDK connected to `turnout server`) and "
    "the gates read its cohorts from Prometheus, which this demo does not run (README: \"Feature "
    "toggles evaluated by the app\")."
)


def strategies(only: tuple[str, ...], router: str) -> tuple[list[str], str | None]:
    """The strategies the demo runs (`only` those, if any), and a line about what the router
    leaves out (None: nothing)."""
    chosen = [name for name in STRATEGIES if not only or name in only]
    if router == "haproxy" and "feature-toggle" in chosen:
        return [name for name in chosen if name != "feature-toggle"], HAPROXY_TOGGLE
    return chosen, None


@dataclass(frozen=True)
class DemoRow:
    strategy: str
    requests: int
    failed: int
    resent: int
    longest_gap_s: float
    exposed_users: int
    duration_s: float
    outcome: str

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"

    def as_json(self) -> dict[str, object]:
        return {
            "strategy": self.strategy, "requests": self.requests, "failed": self.failed,
            "resent": self.resent, "longest_gap_s": round(self.longest_gap_s, 3),
            "exposed_users": self.exposed_users, "duration_s": round(self.duration_s, 2),
            "outcome": self.outcome,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_spec(folder: Path, port: int, instances: int = 3, router: str = "builtin") -> Path:
    spec: dict[str, object] = {
        "service": "demo",
        "listen": f"127.0.0.1:{port}",
        "instances": instances,
        "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}"], "grace": "5s",
                "env": {"DEMO_FEATURE": FLAG}},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "20s"},
        "routing": {"user_key": {"header": "X-User-Id"}, "preview_listen": f"127.0.0.1:{free_port()}",
                    "drain_timeout": "10s"},
    }
    if router != "builtin":
        spec["router"] = router
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Cutover:
    """Notes when the new revision first takes all traffic, and when a flag goes on for all."""

    def __init__(self, quiet: bool) -> None:
        self.at: float | None = None
        self.flag_at: float | None = None
        self.quiet = quiet
        self.target: str | None = None

    def reset(self, target: str) -> None:
        self.target, self.at, self.flag_at = target, None, None

    def __call__(self, event: Event) -> None:
        if event.kind == "flag" and event.data.get("enabled") and event.data.get("percent") == 100:
            self.flag_at = self.flag_at or time.monotonic()
        if event.kind == "traffic" and self.target is not None and self.at is None:
            weights = {k: v for k, v in event.data.get("weights", {}).items() if v}
            if list(weights) == [self.target]:
                self.at = time.monotonic()
        if not self.quiet:
            print(f"    {event.message}", flush=True)


async def run_demo(*, rate: float = 200.0, only: tuple[str, ...] = (), quiet: bool = False,
                   router: str = "builtin") -> list[DemoRow]:
    chosen, left_out = strategies(only, router)
    if left_out is not None:  # on stderr with --json, so that stdout stays JSON
        print(left_out, file=sys.stderr if quiet else sys.stdout, flush=True)
    rows: list[DemoRow] = []
    with tempfile.TemporaryDirectory(prefix="turnout-demo-") as tmp:
        demo = Demo(write_spec(Path(tmp), free_port(), router=router), rate, Cutover(quiet), quiet)
        async with Session.open(demo.path, emit=demo.cutover) as session:
            try:
                demo.say("deploying v1, the first release")
                await session.deploy("v1")
                for number, name in enumerate(chosen, start=2):
                    rows.append(await demo.deploy(name, f"v{number}"))
            finally:
                await session.down()
    return rows


@dataclass
class Demo:
    path: Path
    rate: float
    cutover: Cutover
    quiet: bool

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    async def deploy(self, name: str, version: str) -> DemoRow:
        """Deploy `version` with strategy `name` under load; measure what users saw."""
        self.say(f"\n{name}: deploying {version} under {self.rate:g} req/s")
        overrides = tuple(f"strategy.{key}={json.dumps(value)}" for key, value in STRATEGIES[name].items())
        async with Session.open(self.path, overrides, emit=self.cutover) as run:
            self.cutover.reset(Revision.of(run.spec, version).id)
            url = f"http://{run.spec.listen}/"
            async with Load(url, rate=self.rate, users=200, max_seconds=300) as load:
                started = time.monotonic()
                record = await run.deploy(version)
                duration = time.monotonic() - started
                await asyncio.sleep(1.0)
            if STRATEGIES[name]["kind"] == "feature-toggle":  # new code path until the flag is on for all
                summary = load.summary(new_version=f"{version}+{FLAG}", until=self.cutover.flag_at)
            else:
                summary = load.summary(new_version=version, until=self.cutover.at)
        outcome = record.phase if record is not None else "succeeded"
        return DemoRow(name, summary.requests, summary.failed, summary.resent, summary.longest_gap_s,
                       summary.exposed_users, duration, outcome)
