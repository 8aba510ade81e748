"""The builtin router's CPU per request with 0, 1 and 3 flags evaluated per request.

One proxy process (pinned to core 0) in front of the fast upstream (`bench/upstream.py`),
loaded by `wrk` (pinned to core 1) with a user key on every request. Each round measures
the three settings one after the other on the same worker, switching with `PUT /flags`;
every flag is a 50% sticky rollout (`flexibleRollout`, stickiness default) and the routing
table has two weighted pools with user-key stickiness, as in `router_bench.py`.

Two key mixes: `recurring` cycles through 10,000 users (the proxy's per-key cache answers
after the first sight of each) and `unique` sends a new user key on every request (every
request is evaluated by the engine: the worst case).

Usage: .venv/bin/python bench/router_flags_bench.py [--seconds 3] [--rounds 5]
Needs `wrk` and `taskset`. Prints a table and writes bench/results/router_flags.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import httpx
from router_bench import LOAD_CORE, TICKS, start_builtin, start_upstream

HERE = Path(__file__).resolve().parent
FLAG_COUNTS = (0, 1, 3)
MIXES = {"recurring": 10_000, "unique": 0}
SCRIPT = """
local counter = 0
local users = {users}
request = function()
  counter = counter + 1
  local key = counter
  if users > 0 then key = counter % users end
  return wrk.format("GET", "/", {{["X-User-Id"] = "user-" .. key .. "-{salt}"}})
end
"""


def cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def flags_body(count: int) -> dict[str, object]:
    features = [
        {"name": f"flag-{i}", "enabled": True, "strategies": [
            {"name": "flexibleRollout",
             "parameters": {"rollout": "50", "stickiness": "default", "groupId": f"flag-{i}"}},
        ]}
        for i in range(3)
    ]
    state = {"version": 2, "features": features, "segments": []}
    # the same state each time (revision 1, taken again) with another list of evaluated flags
    return {"state": state, "revision": 1, "evaluate": [f"flag-{i}" for i in range(count)],
            "header": "X-Turnout-Flags"}


def run_wrk(port: int, seconds: int, connections: int, script: Path) -> int:
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def measure(port: int, worker: int, args: argparse.Namespace, script: Path) -> dict[str, float]:
    user0, sys0 = cpu_split(worker)
    total = run_wrk(port, args.seconds, args.connections, script)
    user1, sys1 = cpu_split(worker)
    return {"requests": total, "rps": total / args.seconds,
            "user_us": (user1 - user0) / total * 1e6, "sys_us": (sys1 - sys0) / total * 1e6,
            "cpu_us": (user1 - user0 + sys1 - sys0) / total * 1e6}


def bench_mix(mix: str, port: int, worker: int, admin: httpx.Client, state: Path,
              args: argparse.Namespace) -> dict[str, object]:
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in FLAG_COUNTS}
    for round_no in range(args.rounds):
        for count in FLAG_COUNTS:
            script = state / f"{mix}-{round_no}-{count}.lua"
            # a fresh salt per run: `unique` keys never repeat, `recurring` ones start cold
            salt = f"{round_no}.{count}"
            script.write_text(SCRIPT.format(users=MIXES[mix], salt=salt))
            admin.put("/flags", json=flags_body(count)).raise_for_status()
            run_wrk(port, 1, args.connections, script)  # warm-up (and fills the cache)
            result = measure(port, worker, args, script)
            runs[count].append(result)
            print(f"{mix:9} round {round_no + 1} flags={count}: {result['rps']:8.0f} req/s "
                  f"{result['cpu_us']:6.2f} us/req (user {result['user_us']:5.2f}, "
                  f"sys {result['sys_us']:5.2f})", flush=True)
    medians = {n: statistics.median(r["cpu_us"] for r in runs[n]) for n in FLAG_COUNTS}
    user = {n: statistics.median(r["user_us"] for r in runs[n]) for n in FLAG_COUNTS}
    # per round, against the 0-flag run just before: pairs see the same machine load
    paired = {n: statistics.median(r["cpu_us"] / z["cpu_us"] for r, z in zip(runs[n], runs[0],
                                                                             strict=True))
              for n in FLAG_COUNTS}
    return {"runs": runs, "median_cpu_us": medians, "median_user_us": user,
            "ratio_median_of_medians": {n: medians[n] / medians[0] for n in FLAG_COUNTS},
            "ratio_median_paired": paired}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mix", choices=[*MIXES, "both"], default="both")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tfb-"))
    procs = []
    results: dict[str, object] = {}
    try:
        upstream_proc, upstream = start_upstream()
        procs.append(upstream_proc)
        builtin, port, worker = start_builtin(upstream, state)
        procs.append(builtin)
        transport = httpx.HTTPTransport(uds=str(state / "admin.sock"))
        with httpx.Client(transport=transport, base_url="http://proxy") as admin:
            for mix in MIXES if args.mix == "both" else [args.mix]:
                results[mix] = bench_mix(mix, port, worker, admin, state, args)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)
    print(f"\n{'mix':9} {'flags':>5} {'cpu us/req':>11} {'user us/req':>12} "
          f"{'ratio (medians)':>16} {'ratio (paired)':>15}")
    for mix, data in results.items():
        assert isinstance(data, dict)
        for n in FLAG_COUNTS:
            print(f"{mix:9} {n:5d} {data['median_cpu_us'][n]:11.2f} "
                  f"{data['median_user_us'][n]:12.2f} "
                  f"{data['ratio_median_of_medians'][n]:16.3f} "
                  f"{data['ratio_median_paired'][n]:15.3f}")
    out = HERE / "results" / "router_flags.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
