"""The warm-fleet reaper: a detached `turnout reap-warm` that ends rollback windows on time.

Blue-green keeps the previous fleet running, out of traffic, for `rollback_window` so that a
rollback is a flip. Without a reaper that fleet would run until the next turnout command.
So when a command leaves a fleet warm, it starts one reaper (own session, output in the
state folder's `logs/reaper.log`) that sleeps until the window ends and then runs the tidy the
next command would run, under the same deployment lock. The router never calls the
control plane for this.

There is at most one reaper per state folder: whoever starts one (holding the deployment
lock) first stops the one before it, named in the state folder's `reaper.json` by pid, start time
and boot id like an instance, so a reused pid is never signalled. `turnout down` stops it.
The reaper itself is `Session.reap_warm`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from turnout import procs
from turnout.files import write_atomic
from turnout.statedir import StateDir


def start(state: StateDir, spec_path: Path, overrides: Sequence[str]) -> int:
    """Replace the state folder's reaper with a new one for `spec_path`; return its pid.

    The caller holds the deployment lock, so the reaper it replaces is not in a tidy.
    Raises OSError when the process cannot be started.
    """
    stop(state)
    argv = [sys.executable, "-m", "turnout", "reap-warm", "--file", str(spec_path)]
    for override in overrides:
        argv += ["--set", override]
    # The reaper is the deployer's own control plane (it may need TURNOUT_DATABASE_URL and
    # the database's credentials), so it keeps the environment; it starts nothing.
    pid = procs.spawn(argv, cwd=spec_path.parent, env=os.environ, log=state.reaper_log)
    ticks = procs.start_ticks(pid)
    record = {"pid": pid, "started": ticks, "boot_id": procs.boot_id()}
    write_atomic(state.reaper_record, json.dumps(record).encode())
    return pid


def stop(state: StateDir) -> bool:
    """SIGTERM the reaper `reaper.json` names, if that very process still runs."""
    path = state.reaper_record
    try:
        data = json.loads(path.read_text())
        pid, started, boot = int(data["pid"]), float(data["started"]), str(data["boot_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    path.unlink(missing_ok=True)
    if boot != procs.boot_id():
        return False
    try:
        return procs.signal_process(pid, started, signal.SIGTERM)
    except PermissionError:
        return False
