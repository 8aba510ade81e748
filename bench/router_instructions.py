"""Instructions per proxied request of the builtin router worker: this checkout against an
earlier commit, counted by valgrind's callgrind (the same count whatever else the machine
does, unlike CPU time on a shared machine).

Each worker runs alone (bench/worker_alone.py) under callgrind with instrumentation off; after a
warm-up, instrumentation is switched on for exactly `--requests` keep-alive requests of the same
table and headers as bench/router_ab.py, then off. Instructions of the worker process,
event loop and kernel-call wrappers included, divided by the requests.

Usage: .venv/bin/python -m bench.router_instructions --base COMMIT [--requests 20000]
Needs valgrind. Writes bench/results/router_instructions.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench.router_ab import TABLE, base_checkout
from bench.router_bench import start_upstream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nX-User-Id: bench-user\r\n\r\n"


async def send(port: int, count: int, connections: int = 8) -> None:
    async def lane(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(lane(count // connections) for _ in range(connections)))


def measure(src: Path, upstream: int, requests: int) -> float:
    state = Path(tempfile.mkdtemp(prefix="tri-"))
    out = state / "callgrind.out"
    port_file = state / "port"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, str(HERE / "worker_alone.py"), str(state), str(port_file)],
        env={**os.environ, "PYTHONPATH": str(src)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
            time.sleep(0.2)
        port = int(port_file.read_text())
        table = json.loads(json.dumps(TABLE))
        for pool in table["pools"]:
            pool["backends"][0]["address"] = f"127.0.0.1:{upstream}"
        transport = httpx.HTTPTransport(uds=str(state / "admin.sock"))
        with httpx.Client(transport=transport, base_url="http://proxy", timeout=60) as admin:
            admin.put("/table", content=json.dumps(table)).raise_for_status()
        asyncio.run(send(port, 2000))
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(send(port, requests))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(120)
    keep = os.environ.get("KEEP_CALLGRIND")
    if keep:
        shutil.copy(out, f"{keep}.{src.parent.name}")
    text = out.read_text(errors="replace")
    totals = re.search(r"^totals: (\d+)", text, re.MULTILINE)
    shutil.rmtree(state, ignore_errors=True)
    assert totals is not None, "no totals in the callgrind output"
    return int(totals.group(1)) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the earlier commit to compare with")
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    upstream_proc, upstream = start_upstream()
    try:
        with base_checkout(args.base) as (base, old_src):
            result = {name: measure(src, upstream, args.requests)
                      for name, src in (("old", old_src), ("new", ROOT / "src"))}
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(10)
    ratio = result["new"] / result["old"]
    print(f"instructions per request: old ({base}) {result['old']:.0f}, new {result['new']:.0f}; "
          f"new/old {ratio:.3f}")
    out = HERE / "results" / "router_instructions.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"base": base, "requests": args.requests, "instructions": result,
                               "ratio": ratio}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
