"""Memory of the builtin router per idle client connection (what 2,000 idle clients cost).

A real router process; the worker's RSS is read after 300 warm-up connections and again after
2,000 more that never send a byte. Usage: .venv/bin/python -m bench.idle_memory [--connections 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import RoutingTable, Timeouts


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def measure(count: int) -> float:
    state = Path(tempfile.mkdtemp(prefix="tim-"))
    router = BuiltinRouter(state, listen="127.0.0.1:0", preview_listen=None)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await router.ensure_running()
        await router.apply(RoutingTable(generation=1, timeouts=Timeouts(header=600, idle=600)))
        health = await router.health()
        port, pid = int(str(health["listen"]).rsplit(":", 1)[1]), int(str(health["pid"]))
        for _ in range(3):
            conns += [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        await asyncio.sleep(0.5)
        before = rss(pid)
        for _ in range(count // 100):
            conns += [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        await asyncio.sleep(1.0)
        return (rss(pid) - before) / (count // 100 * 100)
    finally:
        for _, writer in conns:
            writer.close()
        await router.stop()
        await router.aclose()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    per = asyncio.run(measure(args.connections))
    total = per * args.connections / 2**20
    print(f"{per:.0f} bytes per idle connection; {total:.1f} MiB for {args.connections}")


if __name__ == "__main__":
    main()
