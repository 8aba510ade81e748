"""How soon a blue-green switch and a rollback move every new request: builtin router and HAProxy.

One service of the bundled demo app per router (two instances, local platform, SQLite state
in a short temporary folder), its spec the same but for `router`: blue-green with a 60 s
rollback window, so that `turnout rollback` right after a switch is a flip back to the warm
fleet. Each round, for each router in turn (the order alternates from round to round, so a
busier moment of the shared machine falls on both), under a constant open-loop load on
127.0.0.1 that records each answer's version and when its request was sent:

- `turnout deploy vN` (blue-green: start the green fleet, wait until healthy, switch);
- `turnout rollback` (the flip back to v(N-1)).

For each command, from the load: the first moment from which every request sent reached the
new revision (the send time of the first request after the last one that did not: answered by
another version, or failed). It is measured from two starts: the command's process start
(the CLI's own start-up, and for a deploy the green fleet's start and health checks,
included), and the moment the router was told, taken from the deployment's stored events
(`turnout history --events ID --json`): the `step` event of the route step that sends all
traffic to the new revision, which the engine stores before it reads what runs and calls the
router's `apply`. The `traffic` event after it is stored once `apply` returned (the router
carries the table, read back for HAProxy); the table shows that too. A request is sent every
1/rate seconds, so every time here is known to that much.

Usage: .venv/bin/python -m bench.switch [--rounds 5] [--rate 200] [--json PATH]
       [--router builtin --router haproxy]
Writes bench/results/switch.json unless told another path, and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from bench.cli import cli_json

from turnout.demo.faults_cli import turnout
from turnout.demo.load import Load, Sample
from turnout.demo.runner import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "switch.json"
ROUTERS = ("builtin", "haproxy")
GOALS_S = {"builtin": 0.1, "haproxy": 1.0}  # the issue's: told -> all new requests on the new revision
SETTLE_S = 0.5  # the load goes on this long after a command ends
USERS = 50


def write_spec(folder: Path, router: str) -> Path:
    spec = {
        "service": f"switch-{router}",
        "listen": f"127.0.0.1:{free_port()}",
        "instances": 2,
        "router": router,
        "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}"], "grace": "2s"},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "10s"},
        "routing": {"drain_timeout": "2s", "preview_listen": f"127.0.0.1:{free_port()}"},  # not listen's + 1
        "strategy": {"kind": "blue-green", "rollback_window": "60s"},
    }
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def all_new_from(samples: Sequence[Sample], version: str) -> float | None:
    """The send time from which every request reached `version` (answered by it, not failed):
    that of the first request after the last one that did not. None if none did after it."""
    other = [s.sent for s in samples if s.version != version or s.failed]
    last = max(other, default=float("-inf"))
    after = [s.sent for s in samples if s.sent > last]
    return min(after) if after else None


def switch_events(events: Sequence[dict[str, Any]], revision: str) -> tuple[float, float]:
    """(wall-clock time of the route step's `step` event, of its `traffic` event) for the
    first traffic change that sends everything to `revision`."""
    for index, event in enumerate(events):
        weights = {k: v for k, v in event["data"].get("weights", {}).items() if v}
        if event["kind"] == "traffic" and list(weights) == [revision]:
            step = next(e for e in reversed(events[:index]) if e["kind"] == "step")
            return float(step["at"]), float(event["at"])
    raise RuntimeError(f"no traffic event sends everything to {revision}")


@dataclass
class Service:
    """One router's service, deployed again and again."""

    router: str
    spec: Path
    count: int = 1  # versions made so far: each deploy makes a new one
    stable: str = "v1"
    previous: str = "v1"  # what a rollback goes back to

    async def first(self) -> None:
        done = await turnout(self.spec, "deploy", "v1")
        if done.code != 0:
            raise RuntimeError(f"{self.router}: the first release failed: {done.tail()}")

    async def measure(self, action: str, rate: float) -> dict[str, Any]:
        """One `deploy` (a switch to the next version) or `rollback` (a flip back) under load."""
        if action == "deploy":
            self.count += 1
        version = f"v{self.count}" if action == "deploy" else self.previous
        args = ("deploy", version, "--json") if action == "deploy" else ("rollback",)
        url = f"http://{yaml.safe_load(self.spec.read_text())['listen']}/"
        async with Load(url, rate=rate, users=USERS, max_seconds=120.0, max_requests=int(rate * 120)) as load:
            await asyncio.sleep(0.2)
            command = time.monotonic()
            done = await turnout(self.spec, *args)
            ended = time.monotonic()
            await asyncio.sleep(SETTLE_S)
        if done.code != 0:
            raise RuntimeError(f"{self.router}: turnout {' '.join(args)} exited {done.code}: {done.tail()}")
        self.previous, self.stable = self.stable, version
        newest = (await cli_json(self.spec, "history", "--json"))[0]
        stored = await cli_json(self.spec, "history", "--events", str(newest["id"]), "--json")
        told, confirmed = switch_events(stored["events"], newest["target_revision"])
        assert load.started is not None and load.started_wall is not None
        offset = load.started - load.started_wall  # wall clock to the load's
        all_new = all_new_from(load.samples, version)
        summary = load.summary(new_version=version)
        return {
            "router": self.router, "action": action, "version": version, "deployment": newest["id"],
            "strategy": newest["strategy"], "command_s": round(ended - command, 4),
            "from_command_s": None if all_new is None else round(all_new - command, 4),
            "from_told_s": None if all_new is None else round(all_new - (told + offset), 4),
            "apply_s": round(confirmed - told, 4), "requests": summary.requests,
            "failed": summary.failed, "resent": summary.resent,
        }


async def run(rounds: int, rate: float, routers: Sequence[str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    folders = [Path(tempfile.mkdtemp(prefix=f"tsw-{r[:1]}-")) for r in routers]  # short: socket paths
    services = [Service(r, write_spec(f, r)) for r, f in zip(routers, folders, strict=True)]
    started = time.monotonic()
    try:
        for service in services:
            await service.first()
        for index in range(rounds):
            order = services if index % 2 == 0 else services[::-1]
            for service in order:
                for action in ("deploy", "rollback"):
                    record = await service.measure(action, rate)
                    records.append(record | {"round": index + 1})
                    print(f"[{time.monotonic() - started:4.0f} s] {service.router} {action} "
                          f"{record['version']}: all new {record['from_told_s']} s after the router "
                          f"was told, {record['from_command_s']} s after the command", file=sys.stderr,
                          flush=True)
    finally:
        for service in services:
            await turnout(service.spec, "down")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return records


def summarise(records: Sequence[dict[str, Any]], router: str, action: str) -> dict[str, Any]:
    ours = [r for r in records if r["router"] == router and r["action"] == action]
    row: dict[str, Any] = {"router": router, "action": action, "runs": len(ours),
                           "never": sum(r["from_told_s"] is None for r in ours),
                           "failed": sum(r["failed"] for r in ours), "resent": sum(r["resent"] for r in ours),
                           "strategies": sorted({r["strategy"] for r in ours})}
    for key in ("from_command_s", "from_told_s", "apply_s", "command_s"):
        values = sorted(r[key] for r in ours if r[key] is not None)
        row[key] = ({"median": statistics.median(values), "min": values[0], "max": values[-1]}
                    if values else None)
    told = row["from_told_s"]
    row["goal_s"] = GOALS_S.get(router)
    row["goal_met"] = told is not None and row["never"] == 0 and told["max"] < GOALS_S.get(router, 0.0)
    return row


def _ms(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "-"
    return f"{cell['median'] * 1000:.0f} ({cell['min'] * 1000:.0f}-{cell['max'] * 1000:.0f})"


def table(rows: Sequence[dict[str, Any]], rate: float) -> str:
    lines = ["| router | command | runs | command -> all new, ms | router told -> all new, ms | "
             "told -> apply returned, ms | goal (told -> all new) | failed / re-sent |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        goal = f"< {row['goal_s'] * 1000:.0f} ms: {'met' if row['goal_met'] else 'not met'}"
        action = "deploy (blue-green switch)" if row["action"] == "deploy" else "rollback (flip)"
        lines.append(f"| {row['router']} | {action} | {row['runs']} | {_ms(row['from_command_s'])} | "
                     f"{_ms(row['from_told_s'])} | {_ms(row['apply_s'])} | {goal} | "
                     f"{row['failed']} / {row['resent']} |")
    lines.append(f"\nmedian (min-max); one request every {1000 / rate:.0f} ms, so each time is known "
                 f"to that much")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="switches and rollbacks per router")
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second (at most 500)")
    parser.add_argument("--router", action="append", choices=ROUTERS, help="only these routers")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100 or not 10 <= args.rate <= 500:
        parser.error("--rounds must be 1-100, --rate 10-500")
    routers = tuple(args.router or ROUTERS)
    if "haproxy" in routers and shutil.which("haproxy") is None:
        parser.error("haproxy is not installed (Debian's haproxy package); or pass --router builtin")
    load_before = os.getloadavg()
    records = asyncio.run(run(args.rounds, args.rate, routers))
    rows = [summarise(records, r, a) for r in routers for a in ("deploy", "rollback")]
    print(table(rows, args.rate))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "rounds": args.rounds, "rate": args.rate, "users": USERS, "instances": 2,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "summary": rows, "records": records}, indent=2))


if __name__ == "__main__":
    main()
