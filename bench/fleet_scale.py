"""Deployment time and control-plane overhead against fleet size, on real hosts over SSH.

Makes eight test hosts (systemd + sshd containers, `tests/hosts/harness.py`; needs root) and,
for 1, 2, 4 and 8 of them with two instances each, deploys the test app with `rolling`
(batches of half the fleet, so two batches whatever its size) and `canary` (25%, 50%, 100%)
through the real CLI, reading each step's start and end from `turnout deploy --json`.
The steps that wait for the app (until it answers its health check, until it has
stopped) are the app's time and are shown apart; every other step (starting units over
SSH, routing, draining an idle instance) is turnout's own overhead, except the last,
whose time also covers the CLI closing its connections and exiting ("finish"). All hosts
share this machine's two cores, so the apps starting on them compete with each other and
with the control plane: a start step on many hosts also carries their start-up CPU. For scale, the same run
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from tests.hosts.harness import HostFleet, default_cache
from tests.hosts.service import HostService

from turnout.model import Revision
from turnout.platforms.ssh import SshPlatform
from turnout.spec import Spec
from turnout.spec.hosts import SshPlatformSpec

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
    runs = [await deploy_timed(service, f"v{number}") for number in range(1, rounds + 1)]
    service.run("down", timeout=120)

    def median_of(pick: Callable[[list[tuple[str, float]]], float]) -> float:
        return statistics.median(pick(timed) for timed in runs)

    def mean_ms(kind: str) -> float:
        return median_of(lambda t: 1000 * statistics.mean([s for k, s in t if k == kind] or [0.0]))

    def own(timed: list[tuple[str, float]]) -> list[float]:  # the last step also ends the CLI
        return [s for k, s in timed[:-1] if k not in APP_WAITS]

    return {
        "hosts": size, "instances": 2 * size, "strategy": strategy, "steps": len(runs[0]),
        "deploy_s": median_of(lambda t: sum(s for _, s in t)),
        "app_s": median_of(lambda t: sum(s for k, s in t if k in APP_WAITS)),
        "start_ms": mean_ms("start"), "route_ms": mean_ms("route:"), "drain_ms": mean_ms("drain"),
        "overhead_per_step_ms": median_of(lambda t: 1000 * statistics.mean(own(t))),
        "finish_ms": median_of(lambda t: 1000 * t[-1][1]),
    }


async def start_step(fleet: HostFleet, size: int, rounds: int) -> dict[str, Any]:
    """One start step of `2 x size` instances through the platform alone (units running
    `sleep`: no app start-up), its wall time and this process's CPU time (the control plane)."""
    spec = Spec.model_validate({"service": "bench", "run": {"command": ["sleep", "600"]}, "platform": {
        "kind": "ssh", "hosts": [h.address for h in fleet.hosts[:size]], "user": fleet.user,
        "identity": str(fleet.identity), "known_hosts": str(fleet.known_hosts), "instances_per_host": 2}})
    assert isinstance(spec.platform, SshPlatformSpec)
    walls, cpus = [], []
    for number in range(rounds + 1):
        platform = SshPlatform(spec.platform, spec_dir=Path.cwd())
        try:
            await platform.instances("bench")  # connections open, as in a deployment
            revision = Revision.of(spec, f"s{number}")
            cpu, wall = time.process_time(), time.perf_counter()
            started = await asyncio.gather(*(platform.start(revision, slot=s) for s in range(2 * size)))
            if number:  # the first round warms up
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            await asyncio.gather(*(platform.stop(i, grace=1) for i in started))
        finally:
            await platform.aclose()
    return {"hosts": size, "instances": 2 * size, "wall_ms": 1000 * statistics.median(walls),
            "control_plane_cpu_ms": 1000 * statistics.median(cpus)}


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
        starts = [asyncio.run(start_step(fleet, size, args.rounds)) for size in args.sizes]
        for row in starts:
            cpu = row["control_plane_cpu_ms"]
            print(f"start step, {row['hosts']} hosts x 2: {row['wall_ms']:.0f} ms, control plane CPU "
                  f"{cpu:.0f} ms ({cpu / row['instances']:.1f} ms per instance)", flush=True)
        for strategy in STRATEGIES:
            for size in args.sizes:
                rows.append(asyncio.run(one_size(fleet, size, strategy, args.rounds, Path(temp))))
                row = rows[-1]
                print(f"{strategy:8} {size} hosts x 2: {row['steps']} steps in {row['deploy_s']:.2f} s "
                      f"(app {row['app_s']:.2f} s); start {row['start_ms']:.0f} ms, route "
                      f"{row['route_ms']:.0f} ms, drain {row['drain_ms']:.0f} ms; turnout per step "
                      f"{row['overhead_per_step_ms']:.0f} ms; finish {row['finish_ms']:.0f} ms", flush=True)
    print(f"\none command: asyncssh on an open connection {costs['asyncssh_open_ms']:.1f} ms, "
          f"a new ssh process {costs['ssh_per_command_ms']:.0f} ms "
          f"({costs['ssh_per_command_ms'] / costs['asyncssh_open_ms']:.0f}x)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "start_steps": starts, "commands": costs}, indent=2))


if __name__ == "__main__":
    main()
