"""`python -m turnout.demo.preview_load`: a short load on the green fleet before the switch.

A blue-green `tests` command for the demo: it sends `--requests` GETs at `--rate` per second
to `TURNOUT_PREVIEW_URL` (which turnout sets for a test command) with the demo's load
generator, prints what came back and exits 0 whatever the answers were. It only makes the
traffic; `preview_analysis` judges it on the router's counters, with the same limits the
live traffic gets. Exit 2 for a bad option or no preview URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter

from turnout.demo.load import Load

MAX_SECONDS = 30.0


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m turnout.demo.preview_load")
    parser.add_argument("--requests", type=int, default=60, help="how many requests (1-10000)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (up to 1000)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds one request may take")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10_000:
        parser.error("--requests: between 1 and 10000")
    if not 0 < args.rate <= 1000 or not 0 < args.timeout <= MAX_SECONDS:
        parser.error("--rate: above 0 and up to 1000; --timeout: above 0 and up to 30")
    return args


async def _send(url: str, args: argparse.Namespace) -> Counter[str]:
    load = Load(url, rate=args.rate, users=args.requests, max_requests=args.requests,
                max_seconds=MAX_SECONDS, timeout=args.timeout, connections=8)
    async with load:
        await load.finished()
    return Counter(str(s.status) if s.status else (s.error or "no answer") for s in load.samples)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    url = os.environ.get("TURNOUT_PREVIEW_URL")
    if not url:
        print("preview_load: TURNOUT_PREVIEW_URL is not set (turnout sets it for a blue-green "
              "test command)", file=sys.stderr)
        return 2
    try:
        answers = asyncio.run(_send(url, args))
    except ValueError as exc:  # not a local URL
        print(f"preview_load: {exc}", file=sys.stderr)
        return 2
    print("preview_load: " + ", ".join(f"{n} x {what}" for what, n in answers.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
