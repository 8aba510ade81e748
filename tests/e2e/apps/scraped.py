"""A blue-green test command: exit 0 once Prometheus has scraped every instance of the green fleet.

    python scraped.py PROMETHEUS_URL INSTANCES [SECONDS]

Polls `count(demo_request_seconds_count{version="$TURNOUT_VERSION"})` (the demo app exports
that series, at zero, from its start) until it reaches INSTANCES, every 200 ms for at most
SECONDS (default 30); exits 1 if it never does. So the switch waits until monitoring sees
the new fleet, and the gates after it judge counters Prometheus already has.
"""

from __future__ import annotations

import os
import sys
import time

import httpx


def main() -> int:
    url, wanted = sys.argv[1].rstrip("/"), int(sys.argv[2])
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 30.0)
    query = f'count(demo_request_seconds_count{{version="{os.environ["TURNOUT_VERSION"]}"}})'
    seen = 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(f"{url}/api/v1/query", data={"query": query}, timeout=2.0).json()
            result = answer["data"]["result"]
            seen = int(float(result[0]["value"][1])) if result else 0
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            print(f"Prometheus: {exc}", file=sys.stderr)
        if seen >= wanted:
            return 0
        time.sleep(0.2)
    print(f"Prometheus scraped {seen} of {wanted} instances in time", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
