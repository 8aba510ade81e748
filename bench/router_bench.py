"""Benchmark the builtin router against HAProxy (one thread) in front of the same upstream.

For each target (the upstream directly, the builtin router, HAProxy) it measures:
keep-alive throughput with `wrk` pinned to the other core than the proxy, CPU seconds per
proxied request of the proxy process (/proc/PID/stat utime+stime around the wrk run), and
p50/p99 latency of a paced open-loop client at a fixed rate. The builtin router gets a table
with two weighted pools, user-key stickiness on (wrk sends a user key) and its counters.

Usage: .venv/bin/python bench/router_bench.py [--seconds 5] [--connections 32] [--rate 1000]
Needs `haproxy`, `wrk` and `taskset` (apt-get install -y haproxy wrk). Writes
bench/results/router.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

from turnout.routers.table import Backend, Pool, RoutingTable, UserKey

HERE = Path(__file__).resolve().parent
PROXY_CORE, LOAD_CORE = "0", "1"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_port(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_wrk(port: int, seconds: int, connections: int) -> tuple[float, int]:
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "-H", "X-User-Id: bench-user", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {errors.group(0)}")
    return rps, total


async def paced(port: int, rate: int, seconds: float, connections: int = 10) -> list[float]:
    """Open-loop load: request i is due at start + i/rate.

    Latency counts from when a request was due if its lane was still busy then (queueing
    behind a slow answer is the proxy's fault), else from when it was sent (a late timer
    wake-up of this client is not).
    """
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nX-User-Id: bench-user\r\n\r\n"
    total = int(rate * seconds)
    latencies: list[float] = []
    start = time.perf_counter() + 0.2  # uvloop's loop.time() only ticks in milliseconds

    async def lane(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        free_at = 0.0
        for i in range(first, total, connections):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            begin = due if free_at > due else sent
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            free_at = time.perf_counter()
            latencies.append(free_at - begin)
        writer.close()

    await asyncio.gather(*(lane(i) for i in range(connections)))
    return sorted(latencies)


def latency(port: int, rate: int, seconds: float) -> tuple[float, float]:
    values = uvloop.run(paced(port, rate, seconds))
    return values[len(values) // 2], values[int(len(values) * 0.99)]


def start_upstream() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, sys.executable, str(HERE / "upstream.py")],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_builtin(upstream: int, state: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", PROXY_CORE, sys.executable, "-m", "turnout.routers.proxy",
         "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    address = f"127.0.0.1:{upstream}"
    backends = (Backend(id="app", address=address),)
    new = Pool(revision="new", version="new", weight=10, backends=backends)
    old = Pool(revision="old", version="old", weight=90, backends=backends)
    table = RoutingTable(
        generation=1,
        pools=(new, old),
        user_key=UserKey(header="X-User-Id"),
    )
    transport = httpx.HTTPTransport(uds=str(state / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://proxy") as admin:
        admin.put("/table", content=table.model_dump_json()).raise_for_status()
        worker = int(admin.get("/healthz").json()["pid"])
    return proc, port, worker


HAPROXY_CFG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend app
backend app
    balance roundrobin
    server new 127.0.0.1:{upstream} weight 10
    server old 127.0.0.1:{upstream} weight 90
"""


def start_haproxy(upstream: int, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = state / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, upstream=upstream))
    proc = subprocess.Popen(["taskset", "-c", PROXY_CORE, "haproxy", "-f", str(cfg), "-db"])
    wait_port(port)
    return proc, port


def measure(name: str, port: int, pid: int | None, args: argparse.Namespace) -> dict[str, float]:
    run_wrk(port, 1, args.connections)  # warm up
    before = cpu_seconds(pid) if pid else 0.0
    rps, total = run_wrk(port, args.seconds, args.connections)
    cpu = (cpu_seconds(pid) - before) / total if pid else 0.0
    p50, p99 = latency(port, args.rate, args.seconds)
    result = {"rps": rps, "requests": total, "cpu_us_per_request": cpu * 1e6,
              "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3}
    print(f"{name:8} {rps:10.0f} {cpu * 1e6:12.1f} {p50 * 1e3:9.3f} {p99 * 1e3:9.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tb-"))
    procs: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, float]] = {}
    try:
        upstream_proc, upstream = start_upstream()
        procs.append(upstream_proc)
        print(f"{'target':8} {'req/s':>10} {'cpu us/req':>12} {'p50 ms':>9} {'p99 ms':>9}")
        results["direct"] = measure("direct", upstream, upstream_proc.pid, args)
        builtin, port, worker = start_builtin(upstream, state)
        procs.append(builtin)
        results["builtin"] = measure("builtin", port, worker, args)
        haproxy, hport = start_haproxy(upstream, state)
        procs.append(haproxy)
        results["haproxy"] = measure("haproxy", hport, haproxy.pid, args)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)
    b, h, d = results["builtin"], results["haproxy"], results["direct"]
    ratios = {
        "rps": b["rps"] / h["rps"],
        "cpu_per_request": b["cpu_us_per_request"] / h["cpu_us_per_request"],
        "added_p99_ms_builtin": b["p99_ms"] - d["p99_ms"],
        "added_p99_ms_haproxy": h["p99_ms"] - d["p99_ms"],
    }
    print("builtin/haproxy: " + ", ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    out = HERE / "results" / "router.json"
    out.parent.mkdir(exist_ok=True)
    payload = {"settings": vars(args), "results": results, "builtin_vs_haproxy": ratios}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
