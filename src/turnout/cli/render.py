"""How the CLI shows progress, status, history and the demo table (rich, or JSON lines)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from turnout.engine.events import Event
from turnout.status import DeploymentStatus, Status
from turnout.store.db import DeploymentRecord
from turnout.store.records import Event as StoredEvent

if TYPE_CHECKING:
    from turnout.demo.runner import DemoRow

STYLES = {"rollback": "bold red", "failed": "bold red", "succeeded": "bold green", "gate": "cyan",
          "paused": "yellow", "warning": "yellow", "traffic": "magenta"}


class Printer:
    def __init__(self, *, as_json: bool = False) -> None:
        self.as_json = as_json
        # Piped output is not cut to 80 columns: tables stay whole in logs and CI.
        width = None if sys.stdout.isatty() else 160
        self.out = Console(highlight=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def event(self, event: Event) -> None:
        if self.as_json:
            print(json.dumps({"at": time.time(), **asdict(event)}), flush=True)
            return
        prefix = f"[{event.step}/{event.total}] " if event.step is not None else "  "
        style = STYLES.get(event.kind, "")
        self.out.print(f"{prefix}{event.message}", style=style, markup=False)

    def note(self, message: str) -> None:
        self.err.print(message, style="yellow", markup=False)

    def outcome(self, record: DeploymentRecord | None) -> None:
        if record is None:
            return
        line = f"deployment #{record.id} of {record.version}: {record.phase}"
        if record.message:
            line += f" ({record.message})"
        if self.as_json:
            print(json.dumps({"deployment": record.id, "phase": record.phase, "message": record.message}))
            return
        style = "bold green" if record.phase == "succeeded" else "bold red"
        final = ("succeeded", "failed", "aborted", "rollback-failed")
        self.out.print(line, style=style if record.phase in final else "", markup=False)
        if record.phase == "rollback-failed":
            self.err.print("the previous version could not be brought back: check `turnout status`",
                           style="bold red", markup=False)

    def status(self, status: Status) -> None:
        if self.as_json:
            print(json.dumps(status.model_dump(mode="json"), indent=2), flush=True)
            return
        stable = status.stable
        self.out.print(f"service  {status.service}  listening on {status.listen}", markup=False)
        self.out.print(f"stable   {stable.version or '-'} ({stable.revision or 'none'})", markup=False)
        if status.deployment is not None:
            self._deployment(status.deployment)
        broken = status.rollback_failed
        if broken is not None:
            self.out.print(f"ALERT    deployment #{broken.id} of {broken.version} could not bring the "
                           f"previous version back: {broken.message}", style="bold red", markup=False)
        router = status.router
        split = ", ".join(f"{v} {w}%" for v, w in router.traffic.items()) or "-"
        running = "running" if router.running else "stopped"
        if "host" in router.where:
            running += f" on host {router.where['host']}"
        self.out.print(f"router   {running}; traffic: {split}", markup=False)
        if router.answered:
            counts = "; ".join(
                f"{who} " + ", ".join(f"{n}x{code}" for code, n in sorted(codes.items()))
                for who, codes in router.answered.items())
            self.out.print(f"         answered by the router itself: {counts}", markup=False)
        table = Table("host", "instance", "version", "address", "pid", "state", "health", "in flight")
        host = None
        for inst in status.instances:  # sorted by host
            health = "healthy" if inst.healthy else f"unhealthy: {inst.problem}"
            table.add_row(inst.host if inst.host != host else "", inst.id, inst.version, inst.address,
                          str(inst.pid), inst.state, health, str(inst.in_flight))
            host = inst.host
        self.out.print(table)

    def _deployment(self, deployment: DeploymentStatus) -> None:
        state = deployment.phase
        if state == "paused" and deployment.message:
            state = f"paused ({deployment.message}; `turnout promote` continues)"
        if deployment.interrupted:
            state = (f"INTERRUPTED (`turnout deploy {deployment.version}` resumes, "
                     "`turnout abort` undoes)")
        self.out.print(
            f"deploy   #{deployment.id} {deployment.version} ({deployment.strategy}): {state}, "
            f"step {deployment.step + 1}/{deployment.steps}: {deployment.current or 'done'}",
            markup=False,
        )
        gate = deployment.gate
        if gate is not None:
            ago = max(0.0, time.time() - gate.at)
            verdict = f"{gate.verdict}: " if gate.verdict else ""
            style = STYLES.get(gate.verdict.lower(), "cyan") if gate.verdict else "cyan"
            self.out.print(f"gate     {verdict}{gate.reason} (step {gate.step + 1}, {ago:.0f}s ago)",
                           style=style, markup=False)
            if gate.evidence:
                self.out.print(f"         evidence: {_compact(gate.evidence)}", markup=False)

    def events(self, record: DeploymentRecord, events: list[StoredEvent]) -> None:
        """One deployment and every event stored with it, oldest first."""
        if self.as_json:
            print(json.dumps({"deployment": asdict(record), "events": [asdict(e) for e in events]},
                             indent=2), flush=True)
            return
        line = f"deployment #{record.id} of {record.version} with {record.strategy}: {record.phase}"
        self.out.print(line + (f" ({record.message})" if record.message else ""), markup=False)
        for event in events:
            at = time.strftime("%H:%M:%S", time.localtime(event.at))
            step = f"[{event.step + 1}]" if event.step >= 0 else "[-]"
            self.out.print(f"  {at} {step:>5} {event.kind:<9} {event.message}",
                           style=STYLES.get(event.kind, ""), markup=False)
            for key, value in event.data.items():
                self.out.print(f"{'':25}{key}: {_compact(value)}", markup=False)

    def history(self, records: list[DeploymentRecord]) -> None:
        if self.as_json:
            print(json.dumps([asdict(r) | {"plan": len(r.plan)} for r in records], indent=2, default=str))
            return
        table = Table("#", "version", "strategy", "phase", "started", "took", "message")
        for r in records:
            took = f"{(r.finished_at or time.time()) - r.created_at:.1f}s"
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
            table.add_row(str(r.id), r.version, r.strategy, r.phase, started, took, r.message[:60])
        self.out.print(table)

    def demo(self, rows: list[DemoRow]) -> None:
        table = Table("strategy", "requests", "failed", "re-sent", "longest gap", "exposed users", "duration",
                      "outcome")
        for row in rows:
            table.add_row(row.strategy, str(row.requests), str(row.failed), str(row.resent),
                          f"{row.longest_gap_s:.2f}s", str(row.exposed_users), f"{row.duration_s:.1f}s",
                          row.outcome)
        self.out.print(table)


def _compact(value: Any) -> str:
    """A value of an event's data on one line."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
