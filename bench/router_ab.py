"""CPU per proxied request of the builtin router: this checkout against an earlier commit.

Both routers run from source, one after the other in alternating order (A B B A A B ...), on
the same pinned core, with the same table (two weighted pools, user-key stickiness) and the
same `wrk` load from the other core, so that the noise of a shared machine falls on both
alike. The earlier commit is checked out into a temporary git worktree and imported through
PYTHONPATH; nothing of it is kept. The answer is the ratio of the medians (new / old) and
the median of the per-pair ratios.

Usage: .venv/bin/python bench/router_ab.py --base COMMIT [--rounds 6] [--seconds 5]
Needs `wrk` and `taskset`. Writes bench/results/router_ab.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from bench.router_bench import PROXY_CORE, cpu_seconds, free_port, run_wrk, start_upstream, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLE = {  # only fields every version of the table knows
    "generation": 1,
    "pools": [
        {"revision": "new", "version": "new", "weight": 10, "backends": [{"id": "app", "address": ""}]},
        {"revision": "old", "version": "old", "weight": 90, "backends": [{"id": "app", "address": ""}]},
    ],
    "user_key": {"header": "X-User-Id", "cookie": None},
}


@contextlib.contextmanager
def base_checkout(rev: str) -> Iterator[tuple[str, Path]]:
    """(short name, source folder) of commit `rev`, checked out in a temporary worktree."""
    base = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    worktree = Path(tempfile.mkdtemp(prefix="turnout-base-"))
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(worktree), base], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        yield base, worktree / "src"
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False,
                       capture_output=True)
        shutil.rmtree(worktree, ignore_errors=True)


def start_router(src: Path, upstream: int, state: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """The builtin router imported from `src`, pinned to the proxy core; (process, port, worker pid)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(
        ["taskset", "-c", PROXY_CORE, sys.executable, "-m", "turnout.routers.proxy",
         "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
        stderr=subprocess.DEVNULL, env=env,
    )
    wait_port(port)
    table = json.loads(json.dumps(TABLE))
    for pool in table["pools"]:
        pool["backends"][0]["address"] = f"127.0.0.1:{upstream}"
    transport = httpx.HTTPTransport(uds=str(state / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://proxy") as admin:
        admin.put("/table", content=json.dumps(table)).raise_for_status()
        worker = int(admin.get("/healthz").json()["pid"])
    return proc, port, worker


def one_run(src: Path, upstream: int, seconds: int, connections: int) -> float:
    """CPU microseconds of the proxy worker per request over one wrk run."""
    state = Path(tempfile.mkdtemp(prefix="tab-"))
    proc, port, worker = start_router(src, upstream, state)
    try:
        run_wrk(port, 1, connections)  # warm up
        before = cpu_seconds(worker)
        _, total = run_wrk(port, seconds, connections)
        return (cpu_seconds(worker) - before) / total * 1e6
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)


def alternate(sources: dict[str, Path], args: argparse.Namespace) -> dict[str, list[float]]:
    """`args.rounds` rounds of one run each of old and new, in alternating order."""
    runs: dict[str, list[float]] = {"old": [], "new": []}
    upstream_proc, upstream = start_upstream()
    try:
        print(f"{'round':>5} {'order':>8} {'old us/req':>11} {'new us/req':>11} {'new/old':>8}", flush=True)
        for i in range(args.rounds):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for name in order:
                runs[name].append(one_run(sources[name], upstream, args.seconds, args.connections))
                time.sleep(0.5)
            old, new = runs["old"][-1], runs["new"][-1]
            print(f"{i + 1:5} {'/'.join(order):>8} {old:11.2f} {new:11.2f} {new / old:8.3f}", flush=True)
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(10)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with base_checkout(args.base) as (base, old_src):
        runs = alternate({"old": old_src, "new": ROOT / "src"}, args)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    pairs = [n / o for o, n in zip(runs["old"], runs["new"], strict=True)]
    summary = {"ratio_of_medians": medians["new"] / medians["old"],
               "median_pair_ratio": statistics.median(pairs)}
    print(f"median old {medians['old']:.2f} us/req, new {medians['new']:.2f} us/req; "
          f"new/old {summary['ratio_of_medians']:.3f} (median of pairs {summary['median_pair_ratio']:.3f})")
    out = HERE / "results" / "router_ab.json"
    out.parent.mkdir(exist_ok=True)
    payload = {"base": base, "settings": vars(args), "runs": runs, "medians": medians, "summary": summary}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
