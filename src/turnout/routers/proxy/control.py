"""`python -m turnout.routers.proxy.control`: the builtin router's process on a router host.

`turnout.routers.hosted` runs it over SSH, with the router's code on PYTHONPATH, so the
host starts and stops its proxy with the same code (`proxy.process`) as this machine does:

- `start --state-dir D --listen A [--preview-listen B]`: start the proxy unless it runs,
  wait until it has bound its sockets (its pid file names it), print `{"pid": N}`; exit 1
  with the end of its log when it ends first or does not bind within `START_SECONDS`.
- `stop --state-dir D`: SIGTERM, wait for the drain, kill what lingers.
- `log --state-dir D [--lines N]`: the end of its log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from turnout import procs
from turnout.routers.proxy.process import ProxyProcess
from turnout.statedir import make_private

START_SECONDS = 10.0


def _start(process: ProxyProcess, listen: str, preview_listen: str | None) -> int:
    found = process.identity()
    if found is not None:
        print(json.dumps({"pid": found[0]}))
        return 0
    make_private(process.state_dir)
    try:
        pid, started = process.spawn(listen, preview_listen)
    except OSError as exc:
        print(f"cannot start the builtin router: {exc}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and procs.is_running(pid, None):
        found = process.identity()
        if found is not None and found[0] == pid:
            print(json.dumps({"pid": pid}))
            return 0
        time.sleep(0.05)
    if started is not None:
        procs.signal_group(pid, started, signal.SIGKILL)
    print(f"the builtin router did not start (log {process.log_path}):\n{process.log_tail()}",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout router control")
    parser.add_argument("action", choices=("start", "stop", "log"))
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--listen")
    parser.add_argument("--preview-listen")
    parser.add_argument("--lines", type=int, default=15)
    args = parser.parse_args(argv)
    process = ProxyProcess(args.state_dir)
    if args.action == "start":
        if not args.listen:
            parser.error("start needs --listen")
        return _start(process, args.listen, args.preview_listen)
    if args.action == "stop":
        try:
            asyncio.run(process.stop())
        except PermissionError as exc:
            print(f"not allowed to stop the builtin router: {exc}", file=sys.stderr)
            return 1
        return 0
    print(process.log_tail(args.lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
