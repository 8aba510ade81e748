"""Normal clients beside a test, in their own process so that the test's own event loop
cannot slow them: `python -m tests.integration.steady_load URL RATE SECONDS` prints one JSON
line with the counts and the latency percentiles of a constant-rate load (`turnout.demo.load`).
"""

from __future__ import annotations

import json
import sys

import uvloop

from turnout.demo.load import Load


async def run(url: str, rate: float, seconds: float) -> dict[str, object]:
    async with Load(url, rate=rate, users=50, max_seconds=seconds, timeout=5.0) as load:
        await load.finished()
    summary = load.summary(new_version="")
    latencies = sorted(s.done - s.sent for s in load.samples if not s.failed)
    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("inf")
    return {"requests": summary.requests, "failed": summary.failed, "resent": summary.resent,
            "errors": summary.errors, "p50_ms": pick(0.5) * 1000, "p99_ms": pick(0.99) * 1000,
            "max_ms": (latencies[-1] if latencies else float("inf")) * 1000}


def main() -> None:
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(uvloop.run(run(url, rate, seconds))), flush=True)


if __name__ == "__main__":
    main()
