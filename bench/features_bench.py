"""Requests per second of `GET /api/client/features` on one core.

Starts a real `turnout server` pinned to core 0 (`taskset -c 0`) over a fresh SQLite
store holding N flags (rollouts with constraints and variants, like a real project),
then loads it with `wrk` pinned to core 1, sending a client token and
`Accept-Encoding: gzip` as the SDKs do: once as a first fetch (200 with the document),
once as a poll with `If-None-Match` of the current revision (304). Prints a table and
writes `bench/results/features.json`.

    python bench/features_bench.py [--duration 5] [--connections 64] [--flags 5 350]

Needs `wrk` and `taskset` (`apt-get install -y wrk`; scripts/install-system-deps.sh does).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.sdk.server_proc import ServerProcess  # noqa: E402

from turnout.flags.store import FlagStore  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "features.json"


def _flag(i: int) -> dict[str, Any]:
    return {
        "name": f"feature-{i:03d}", "enabled": i % 7 != 0, "description": f"benchmark flag {i}",
        "strategies": [{
            "name": "flexibleRollout",
            "parameters": {"rollout": str(i % 101), "stickiness": "default", "groupId": f"g{i}"},
            "constraints": [{"contextName": "environment", "operator": "IN",
                             "values": ["production", "staging"]}],
        }],
        "variants": [{"name": "blue", "weight": 500, "payload": {"type": "string", "value": "b"}},
                     {"name": "green", "weight": 500}],
    }


def _fill(db: str, count: int) -> tuple[str, int]:
    with FlagStore.open(db) as store:
        for i in range(count):
            store.create(_flag(i), who="bench")
        return store.create_token("bench", "client"), store.revision()


def _wrk(url: str, headers: dict[str, str], duration: int, connections: int) -> dict[str, Any]:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, duration)}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True,
                          timeout=duration + 30)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": round(rps), "p50": p50.group(1) if p50 else None,
            "p99": p99.group(1) if p99 else None, "bad_responses": int(errors.group(1)) if errors else 0}


def run(flag_counts: list[int], duration: int, connections: int) -> list[dict[str, Any]]:
    rows = []
    for count in flag_counts:
        with tempfile.TemporaryDirectory() as tmp:
            db = f"sqlite:///{Path(tmp) / 'state.db'}"
            token, revision = _fill(db, count)
            server = ServerProcess.start(db, prefix=["taskset", "-c", "0"])
            try:
                url = f"{server.url}/api/client/features"
                base = {"Authorization": token, "Accept-Encoding": "gzip"}
                _wrk(url, base, 1, connections)  # warm up
                for mode, headers in (("200 (full state, gzip)", base),
                                      ("304 (If-None-Match)", {**base, "If-None-Match": f'"{revision}"'})):
                    rows.append({"flags": count, "mode": mode, **_wrk(url, headers, duration, connections)})
            finally:
                server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--flags", type=int, nargs="+", default=[5, 350])
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'}")
            return 1
    rows = run(args.flags, args.duration, args.connections)
    print(f"{'flags':>5}  {'request':<24} {'req/s':>9}  {'p50':>8}  {'p99':>8}  bad")
    for row in rows:
        print(f"{row['flags']:>5}  {row['mode']:<24} {row['requests_per_s']:>9}  {row['p50']!s:>8}"
              f"  {row['p99']!s:>8}  {row['bad_responses']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"server_core": 0, "load_core": 1, "duration_s": args.duration,
                                   "connections": args.connections, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
