"""HAProxy's CPU per request with turnout's Lua routing, against plain weighted round robin.

Starts one fast upstream (`bench/upstream.py`) and HAProxy processes in front of it, the
first three `nbthread 1` pinned to CPU 0 (wrk and the upstream on CPU 1):

- plain:   one backend, two servers weighted 10/90, `balance roundrobin`
- route:   turnout's frontend lines (`maps.frontend_lines`): the Lua converter routes each
           request to pool backend p0 (weight 10) or p1 (90) by the MurmurHash3 bucket of its
           `X-User-Id`, after a header rule and a 100-user rule, which it does not match
- full:    route plus the pool backends' lines (`maps.backend_lines`) that time every answer
           into the Lua's latency histograms
- plain2, full2: plain and full with `nbthread 2` on both CPUs (so beside wrk and the
           upstream on CPU 1), the Lua loaded once for both threads as turnout loads it

Each round runs wrk (keep-alive, user keys shaped like UUIDs, from a wrk script), once with
`--users` recurring users in random order and once with a new user on every request, against
each process in 1-second slices taken in turn (`--seconds` slices each, the order rotating
from slice to slice, so that a busy moment of the shared machine hits every process alike),
and divides the CPU time the process's threads ran (/proc/PID/task/*/schedstat, in ns) by
the requests wrk completed. Prints CPU µs per request per round and the ratios to plain.

    .venv/bin/python bench/haproxy_lua.py [--rounds 3] [--seconds 3] [--connections 32] [--users 10000]

Needs `haproxy`, `wrk` and `taskset` (apt-get install -y haproxy wrk).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from router_bench import LOAD_CORE, PROXY_CORE, free_port, start_upstream, wait_port  # noqa: E402

from turnout.routers.haproxy import maps  # noqa: E402
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, UserKey  # noqa: E402

GLOBAL = """global
    nbthread {threads}
    maxconn 4096
{lua}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
"""

PLAIN = """frontend bench
    bind 127.0.0.1:{port}
    default_backend app
backend app
    balance roundrobin
    server new 127.0.0.1:{upstream} weight 10
    server old 127.0.0.1:{upstream} weight 90
"""

ROUTED = """frontend bench
    bind 127.0.0.1:{port}
{frontend}
backend bench_p0
{observe0}
    server s0 127.0.0.1:{upstream}
backend bench_p1
{observe1}
    server s0 127.0.0.1:{upstream}
"""

# user keys shaped like UUIDs: USERS recurring users in random order, or a new one each time
WRK_SCRIPT = """local users = {users}
local n = 0
request = function()
    n = n + 1
    local id = users > 0 and math.random(users) or n
    return wrk.format(nil, nil, {{["X-User-Id"] = string.format("%08x-0000-4000-8000-%012x", id, id)}})
end
"""


def table(upstream: int) -> RoutingTable:
    backends = (Backend(id="app", address=f"127.0.0.1:{upstream}"),)
    return RoutingTable(
        generation=1,
        pools=(Pool(revision="new", version="2", weight=10, backends=backends),
               Pool(revision="old", version="1", weight=90, backends=backends)),
        rules=(MatchRule(revision="new", header="X-Canary", values=("yes",)),
               MatchRule(revision="new", users=tuple(f"tester-{i}" for i in range(100)))),
        user_key=UserKey(header="X-User-Id"),
    )


KINDS = ("plain", "route", "full", "plain2", "full2")
RATIOS = (("route", "plain"), ("full", "plain"), ("full2", "plain2"))


def threads(kind: str) -> int:
    return 2 if kind.endswith("2") else 1


def config(kind: str, folder: Path, upstream: int) -> tuple[str, int]:
    port = free_port()
    head = {"threads": threads(kind), "lua": ""}
    if kind.startswith("plain"):
        return GLOBAL.format(**head) + PLAIN.format(port=port, upstream=upstream), port
    head["lua"] = "\n".join(f"    {line}" for line in maps.lua_global_lines(str(folder)))
    frontend = "\n".join(f"    {line}" for line in maps.frontend_lines("bench"))
    observe = {f"observe{i}": "\n".join(f"    {line}" for line in maps.backend_lines(f"bench_p{i}"))
               if kind.startswith("full") else "" for i in (0, 1)}
    text = ROUTED.format(port=port, upstream=upstream, frontend=frontend, **observe)
    return GLOBAL.format(**head) + text, port


def start(kind: str, folder: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    text, port = config(kind, folder, upstream)
    cfg = folder / f"{kind}.cfg"
    cfg.write_text(text)
    cores = PROXY_CORE if threads(kind) == 1 else f"{PROXY_CORE},{LOAD_CORE}"
    proc = subprocess.Popen(["taskset", "-c", cores, "haproxy", "-f", str(cfg), "-db"])
    wait_port(port)
    return proc, port


def cpu_seconds(pid: int) -> float:
    """CPU time all threads of `pid` have run, from the scheduler's count in ns (finer than
    the 10 ms ticks of /proc/PID/stat)."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def wrk(port: int, seconds: int, connections: int, script: Path) -> int:
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    for line in out.splitlines():
        if " requests in " in line:
            return int(line.split()[0])
    raise RuntimeError(f"wrk printed no request count:\n{out}")


def cpu_per_request(started: dict[str, tuple[subprocess.Popen[bytes], int]], args: argparse.Namespace,
                    script: Path) -> dict[str, float]:
    """CPU µs per request of each process over `args.seconds` 1-second slices taken in turn."""
    spent, done = dict.fromkeys(started, 0.0), dict.fromkeys(started, 0)
    kinds = list(started)
    for slice_ in range(args.seconds):
        for kind in kinds[slice_ % len(kinds):] + kinds[:slice_ % len(kinds)]:
            proc, port = started[kind]
            before = cpu_seconds(proc.pid)
            done[kind] += wrk(port, 1, args.connections, script)
            spent[kind] += cpu_seconds(proc.pid) - before
    return {kind: spent[kind] / done[kind] * 1e6 for kind in started}


def run_rounds(started: dict[str, tuple[subprocess.Popen[bytes], int]], scripts: dict[str, Path],
               args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """Rounds of every (keys, kind) pair, the kinds' slices interleaved."""
    results: dict[tuple[str, str], list[float]] = {(keys, kind): [] for keys in scripts for kind in started}
    print(f"{'round':>5} {'keys':>10} " + " ".join(f"{kind + ' us/req':>14}" for kind in started))
    for round_ in range(1, args.rounds + 1):
        for keys, script in scripts.items():
            for kind, value in cpu_per_request(started, args, script).items():
                results[keys, kind].append(value)
            cells = " ".join(f"{results[keys, kind][-1]:14.2f}" for kind in started)
            print(f"{round_:>5} {keys:>10} {cells}", flush=True)
    return results


def report(results: dict[tuple[str, str], list[float]], scripts: dict[str, Path]) -> None:
    for keys in scripts:
        for kind, base_kind in RATIOS:
            plain = results[keys, base_kind]
            ratios = [value / base for value, base in zip(results[keys, kind], plain, strict=True)]
            medians = statistics.median(results[keys, kind]) / statistics.median(plain)
            print(f"{keys:>10} {kind}/{base_kind}: median of rounds {statistics.median(ratios):.2f}x, "
                  f"ratio of medians {medians:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3,
                        help="1-second slices of each process per round and key mix")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=10_000, help="recurring users of the first key mix")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="thb-"))
    (folder / maps.MAP_FOLDER).mkdir()
    (folder / maps.LUA_FILE).write_text(maps.lua_source())
    scripts = {f"{args.users} users": folder / "recurring.lua", "all new": folder / "new.lua"}
    for (_, script), users in zip(scripts.items(), (args.users, 0), strict=True):
        script.write_text(WRK_SCRIPT.format(users=users))
    procs: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
    try:
        upstream_proc, upstream = start_upstream()
        procs.append(upstream_proc)
        found = maps.entries("bench", table(upstream), {"new": "bench_p0", "old": "bench_p1"})
        (folder / maps.MAP_FOLDER / maps.MAP_FILE).write_text(maps.map_text(found))
        started = {kind: start(kind, folder, upstream) for kind in KINDS}
        procs += [proc for proc, _ in started.values()]
        for _, port in started.values():
            wrk(port, 1, args.connections, scripts[f"{args.users} users"])  # warm up
        report(run_rounds(started, scripts, args), scripts)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
