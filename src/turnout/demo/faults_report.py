"""The faults demo's rows: what turnout did with one faulty version, and who met the fault.

`judge_run` turns one run (the `turnout deploy` command as `Deployed`, and the load's
samples) into a `FaultRow`. A request met the fault when it failed (no answer, a cut, or
a 5xx from whichever version or the router) or, for a fault that slows answers, when the
faulty code answered it slower than the fault's threshold; the users who met it are the
distinct user keys of those requests. Plain values and pure functions, so the judging is
tested on hand-made samples; `table` draws the rows for a terminal, with why each run
ended as it did below them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text

from turnout.demo.faults_cli import Deployed
from turnout.demo.load_summary import Sample


@dataclass(frozen=True)
class FaultRow:
    fault: str
    title: str
    strategy: str
    exit_code: int | None  # the deploy command's; None when the demo had to kill it
    did: str  # in words: rolled back, not rolled back, held ...
    rolled_back: bool  # turnout went back by itself (not because the demo interrupted it)
    rollback_s: float | None  # from the deploy command's start to its first rollback event
    first_event_s: float | None  # from its start to its first event: the command's own start-up
    duration_s: float  # the deploy command, start to end
    users_met: int
    requests_met: int
    requests: int
    users_met_after: int  # of them, users who met it after the deploy command had ended
    first_share: float | None  # share of traffic the canary's / the toggle's first step had
    first_users: int | None  # the load's users that share took (the router's own hashing)
    reason: str  # why it went back, or the last gate decision, or the outcome
    kinds: dict[str, int]  # the requests that met the fault by kind: `HTTP 504`, `timeout`, `slow`

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        for key in ("rollback_s", "first_event_s", "duration_s"):
            if isinstance(data[key], float):
                data[key] = round(data[key], 2)
        return data


def met(sample: Sample, *, faulty: set[str], slow_s: float | None) -> bool:
    """Whether this request met the fault: it failed, or the faulty code was slow to answer it."""
    if sample.failed:
        return True
    return slow_s is not None and sample.version in faulty and sample.done - sample.sent > slow_s


def what_turnout_did(deployed: Deployed) -> tuple[str, bool]:
    """(in words, whether turnout rolled back by itself)."""
    phase = deployed.outcome.get("phase")
    if deployed.code is None:
        return "killed by the demo", False
    if deployed.held:
        return "held for a human; demo aborted", False
    if deployed.timed_out:
        return "over time; demo aborted", False
    if deployed.code == 3:
        return "rolled back", True
    if deployed.code == 0:
        return "NOT rolled back", False
    return ("rollback failed" if phase == "rollback-failed" else f"error (exit {deployed.code})"), False


def _reason(deployed: Deployed) -> str:
    """Why it went back (the deployment's message), else the last gate decision, else why not."""
    gates = [str(e.get("message", "")) for e in deployed.events if e.get("kind") == "gate"]
    message = str(deployed.outcome.get("message") or "")
    if deployed.held and gates:
        return gates[-1]
    if deployed.code != 0:
        return message or deployed.tail(2)
    return gates[-1] if gates else "no gate watched its traffic, only health checks and tests"


def _kind(sample: Sample) -> str:
    if sample.status is not None:
        return f"HTTP {sample.status}" if sample.failed else "slow"
    return sample.error or "no answer"


def judge_run(
    fault: str, title: str, strategy: str, deployed: Deployed, samples: Iterable[Sample], *,
    faulty: set[str], slow_s: float | None, ended: float, first_share: float | None = None,
    first_users: int | None = None,
) -> FaultRow:
    """The row of one run; `ended` is when the deploy command ended, on the samples' clock."""
    samples = list(samples)
    hits = [s for s in samples if met(s, faulty=faulty, slow_s=slow_s)]
    did, rolled_back = what_turnout_did(deployed)
    return FaultRow(
        fault=fault, title=title, strategy=strategy, exit_code=deployed.code, did=did,
        rolled_back=rolled_back, rollback_s=deployed.rollback_after,
        first_event_s=deployed.startup,
        duration_s=deployed.ended - deployed.started,
        users_met=len({s.user for s in hits}), requests_met=len(hits), requests=len(samples),
        users_met_after=len({s.user for s in hits if s.sent >= ended}),
        first_share=first_share, first_users=first_users,
        reason=_reason(deployed), kinds=dict(Counter(_kind(s) for s in hits)),
    )


def table(rows: Iterable[FaultRow]) -> Group:
    """The rows as a table, then why each run ended as it did, one line each."""
    rows = list(rows)
    out = Table("fault", "strategy", "exit", "turnout did", "rollback at", "users met", "requests met",
                "first step", "users met after end")
    for row in rows:
        share = "-" if row.first_share is None else f"{row.first_share:.1%} = {row.first_users} users"
        code = "-" if row.exit_code is None else str(row.exit_code)
        back = "-" if row.rollback_s is None else f"{row.rollback_s:.1f}s"
        out.add_row(row.title, row.strategy, code, row.did, back, str(row.users_met),
                    f"{row.requests_met} of {row.requests}", share, str(row.users_met_after))
    why = [Text(f"{row.title} with {row.strategy}: {short(row.reason)}") for row in rows]
    return Group(out, Text("why:"), *why)


def short(reason: str) -> str:
    """A reason on one line for the table: no instance ids, addresses or log lines."""
    line = reason.splitlines()[0] if reason else ""
    line = re.sub(r"instance \S+", "an instance", line)
    return re.sub(r"http://[^/\s]+", "", line)
