"""Deployment time and control-plane overhead against fleet size, on real hosts over SSH.

Makes eight test hosts (systemd + sshd containers, `tests/hosts/harness.py`; needs root) and,
for 1, 2, 4 and 8 of them with two instances each, deploys the test app with `rolling`
(batches of half the fleet, so two batches whatever its size) and `canary` (25%, 50%, 100%)
through the real CLI, reading each step's start and end from `turnout deploy --json`.
The steps that wait for the app (until it answers its health check, until it has
stopped) are the app's time and are shown apart; every other step (starting units over
SSH, routing, draining an idle instance) is turnout's own overhead. For scale, the same run
times one command on an open asyncssh connection and one `ssh` process per command (a new
OpenSSH connection each time, as tools that run `ssh` per command do).

Usage: .venv/bin/python -m bench.fleet_scale [--sizes 1 2 4 8] [--rounds 3]
Writes bench/results/fleet_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
from tests.hosts.harness import HostFleet, default_cache
from tests.hosts.service import HostService

RESULTS = Path(__file__).resolve().parent / "results" / "fleet_scale.json"
STRATEGIES: dict[str, dict[str, Any]] = {
    "rolling": {"kind": "rolling", "max_surge": "50%", "max_unavailable": 0},
    "canary": {"kind": "canary", "steps": [{"weight": 25}, {"weight": 50}, {"weight": 100}]},
}
APP_WAITS = ("wait", "stop")  # steps whose time is the app's: starting up, shutting down


async def deploy_timed(service: HostService, version: str) -> list[tuple[str, float]]:
    """(step kind, seconds) for each step of `turnout deploy VERSION`, in order."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "deploy", version, "--json", cwd=service.folder,
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    marks: list[tuple[str, float]] = []
    while line := await proc.stdout.readline():
        event = json.loads(line) if line.startswith(b"{") else {}
        if event.get("kind") == "step":
            marks.append((str(event["message"]).split()[0], time.monotonic()))
    end = time.monotonic()
    if await proc.wait() != 0:
        raise RuntimeError(f"deploy {version} failed")
    ends = [at for _, at in marks[1:]] + [end]
    return [(kind, finish - begin) for (kind, begin), finish in zip(marks, ends, strict=True)]


async def one_size(fleet: HostFleet, size: int, strategy: str, rounds: int, work: Path) -> dict[str, Any]:
    folder = work / f"{strategy}-{size}"
    folder.mkdir()
    service = HostService(folder, fleet)
    service.write(STRATEGIES[strategy], platform=service.platform(
        hosts=[h.address for h in fleet.hosts[:size]]))
    await deploy_timed(service, "v0")
    totals, app, own, steps = [], [], [], []
    for number in range(1, rounds + 1):
        timed = await deploy_timed(service, f"v{number}")
        totals.append(sum(s for _, s in timed))
        app.append(sum(s for kind, s in timed if kind in APP_WAITS))
        mine = [s for kind, s in timed if kind not in APP_WAITS]
        own.append(sum(mine))
        steps.append(len(mine))
    service.run("down", timeout=120)
    return {
        "hosts": size, "instances": 2 * size, "strategy": strategy,
        "deploy_s": statistics.median(totals), "app_s": statistics.median(app),
        "turnout_s": statistics.median(own), "turnout_steps": steps[0],
        "overhead_per_step_ms": 1000 * statistics.median(own) / steps[0],
    }


async def command_costs(fleet: HostFleet, count: int = 30) -> dict[str, float]:
    host = fleet.hosts[0]
    async with asyncssh.connect(host.address, username=fleet.user, client_keys=[str(fleet.identity)],
                                known_hosts=str(fleet.known_hosts)) as conn:
        await conn.run("true", check=True)
        began = time.perf_counter()
        for _ in range(count):
            await conn.run("true", check=True)
        open_ms = 1000 * (time.perf_counter() - began) / count
    argv = fleet.ssh_argv(host)
    began = time.perf_counter()
    for _ in range(count // 3):
        subprocess.run([*argv, "true"], check=True, capture_output=True, timeout=30)
    fresh_ms = 1000 * (time.perf_counter() - began) / (count // 3)
    return {"asyncssh_open_ms": open_ms, "ssh_per_command_ms": fresh_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as temp, \
            HostFleet.start(max(args.sizes), Path(temp) / "hosts", cache=default_cache()) as fleet:
        costs = asyncio.run(command_costs(fleet))
        for strategy in STRATEGIES:
            for size in args.sizes:
                rows.append(asyncio.run(one_size(fleet, size, strategy, args.rounds, Path(temp))))
                row = rows[-1]
                print(f"{strategy:8} {size} hosts x 2: deploy {row['deploy_s']:.2f} s, app "
                      f"{row['app_s']:.2f} s, turnout {row['turnout_s']:.2f} s over "
                      f"{row['turnout_steps']} steps = {row['overhead_per_step_ms']:.0f} ms/step", flush=True)
    print(f"\none command: asyncssh on an open connection {costs['asyncssh_open_ms']:.1f} ms, "
          f"a new ssh process {costs['ssh_per_command_ms']:.0f} ms "
          f"({costs['ssh_per_command_ms'] / costs['asyncssh_open_ms']:.0f}x)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "commands": costs}, indent=2))


if __name__ == "__main__":
    main()
