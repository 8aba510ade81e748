"""The `turnout` command as the faults demo runs it: a child process, watched and bounded.

Each deployment of the faults demo goes through the real CLI (`python -m turnout deploy
... --json`), so its exit code is the one a script would see and the engine's work does
not share an event loop with the load generator. `turnout` reads the events the command
prints as JSON lines, as they come: a deployment that a gate holds for a human is
interrupted at once (SIGINT, as Ctrl-C would: turnout rolls back and exits 3) when asked,
and so is one still running at its time limit; one that outlives its interrupt by
`KILL_AFTER_S` is killed. Nothing here waits without a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KILL_AFTER_S = 30.0  # an interrupted command still running after this is killed
COMMAND_LIMIT_S = 120.0  # any other command


@dataclass
class Deployed:
    """What one `turnout` command did: its exit code, the events it printed, and when."""

    code: int | None  # None: it had to be killed
    started: float  # time.time() when the command was started
    ended: float
    events: list[dict[str, Any]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # lines that were not events, and stderr
    held: bool = False  # a gate held the deployment for a human; the demo interrupted it
    timed_out: bool = False  # still running at its limit; the demo interrupted it

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("kind") == kind), None)

    @property
    def rollback_after(self) -> float | None:
        """Seconds from the command's start to its first rollback event (None: no rollback)."""
        event = self.first("rollback")
        return None if event is None else float(event["at"]) - self.started

    @property
    def restored(self) -> bool:
        """It ended 3 having brought the previous version back (not a toggle's flag switched off
        with its code left serving, dark). Read from the rollback's words: if those change, the
        demo only restores a clean version more often."""
        return self.code == 3 and any("restoring the previous version" in str(e.get("message", ""))
                                      for e in self.events if e.get("kind") == "rollback")

    @property
    def startup(self) -> float | None:
        """Seconds from the command's start to its first event: its own start-up."""
        at = next((e["at"] for e in self.events if "at" in e), None)
        return None if at is None else float(at) - self.started

    @property
    def outcome(self) -> dict[str, Any]:
        """The deployment's last line: `{"deployment": ID, "phase": ..., "message": ...}`."""
        return next((e for e in reversed(self.events) if "phase" in e and "kind" not in e), {})

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.other[-lines:]) or "(no output)"


def _argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "turnout", *args]


async def turnout(
    spec: Path, *args: str, limit: float = COMMAND_LIMIT_S, abort_when_held: bool = False
) -> Deployed:
    """Run `turnout ARGS` beside `spec` until it ends, interrupting it as the docstring says."""
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        *_argv(args), cwd=spec.parent, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    done = Deployed(None, started, started)
    errors = asyncio.create_task(proc.stderr.read())
    try:
        try:
            async with asyncio.timeout(limit):
                await _follow(proc, done, abort_when_held)
        except TimeoutError:
            done.timed_out = True
            _interrupt(proc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_AFTER_S):
                await _follow(proc, done, False)
                done.code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        done.other += (await errors).decode(errors="replace").splitlines()
    done.ended = time.time()
    return done


async def _follow(proc: asyncio.subprocess.Process, done: Deployed, abort_when_held: bool) -> None:
    """Read the command's output to its end; interrupt it once a gate holds it, if asked."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        text = line.decode(errors="replace").strip()
        try:
            event = json.loads(text) if text.startswith("{") else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            done.other.append(text)
            continue
        done.events.append(event)
        if abort_when_held and event.get("kind") == "paused" and not done.held:
            done.held = True
            _interrupt(proc)


def _interrupt(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
