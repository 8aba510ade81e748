"""`turnout demo --faults` through the real CLI: every fault with every strategy.

Each strategy is one test that deploys all six faulty versions of the demo app (a start
crash, never healthy, a hang, 30% 5xx, +300 ms, a crash after 10 requests) through the real
`turnout deploy` under the demo's load of 200 users, so the five tests are the whole table
of the issue: every run must end 3, rolled back by turnout itself, with nobody meeting the
fault once the command has ended. Beyond that, what each strategy promises:
- blue-green: nobody met any fault, since every one is caught on the green fleet before the
  switch (health checks, the smoke test, and `preview_analysis` on the preview load);
- canary: no more users met the fault than the first step's share took (by the router's own
  hashing: 25 of the 200 users for its 10%), with a margin of 2 for a request cut while a
  table changed; a hang shows as the router's 504s;
- feature toggle: no more than the 5 users the flag first went to, with the same margin,
  except a crash of the whole process behind the flag, which every user of that process
  meets: the flag's code runs in the process all users share, so no toggle can keep it to
  its cohort (the gate still fails at its next look, and the crashed code is started again);
- big bang and rolling roll back on their health checks or on `strategy.analysis`, which
  judges the live traffic throughout: a fault that shows only in answers is judged there.

A run takes 25 s (blue-green) to 55 s (feature toggle, whose faulty runs each need a clean
big bang after them) on a 2-core machine: about 3 minutes for the five, shared by the
parallel pass's workers. `BENCHMARKS.md` ("Faulty versions") has the table from one full run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]


def demo(folder: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "demo", "--faults", *args], cwd=folder, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=cli_env(), check=False,
    )


FAULTS = ("start", "health", "hang", "errors", "latency", "crash")
SHOWS_IN_ANSWERS = ("hang", "errors", "latency", "crash")  # a running version that answers badly
SPREAD = 2  # requests cut while a table changed may reach a user or two past the first step
LIVE = ("gate failed", "analysis failed")  # a decision on live traffic
GONE = "no longer run"  # instances found dead when what runs was read again


@pytest.mark.parametrize("strategy", ["big-bang", "rolling", "blue-green", "canary", "feature-toggle"])
def test_every_fault_is_rolled_back_by_turnout_itself(tmp_path: Path, strategy: str) -> None:
    result = demo(tmp_path, "--json", "--strategy", strategy, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    rows: dict[str, dict[str, Any]] = {r["fault"]: r for r in json.loads(result.stdout)}
    assert tuple(rows) == FAULTS
    for fault, row in rows.items():
        what = f"{fault} with {strategy}: {row}"
        assert (row["exit_code"], row["did"], row["rolled_back"]) == (3, "rolled back", True), what
        assert 0 < row["rollback_s"] <= row["duration_s"] < 60, what
        assert row["users_met_after"] == 0, what
        if fault in ("start", "health"):
            assert "healthy" in row["reason"], what
            if strategy != "big-bang":  # the new version never took a request
                assert row["users_met"] == 0, what
        elif strategy != "blue-green":  # judged on the live traffic (or found dead) and no sooner
            assert row["reason"].startswith(LIVE) or GONE in row["reason"], what
    if strategy == "blue-green":
        assert {f: r["users_met"] for f, r in rows.items()} == dict.fromkeys(FAULTS, 0)
        for fault in ("latency", "crash"):  # the smoke test alone lets these by
            assert rows[fault]["reason"].startswith("analysis failed"), rows[fault]
        # 30% 5xx: the smoke test's one request fails 30% of the time, the analysis otherwise
        assert rows["errors"]["reason"].startswith(("analysis failed", "test GET /")), rows["errors"]
    if strategy in ("canary", "feature-toggle"):
        first = 25 if strategy == "canary" else 5
        for fault, row in rows.items():
            assert row["first_users"] == first, row
            if (strategy, fault) != ("feature-toggle", "crash"):
                assert row["users_met"] <= first + SPREAD, f"{fault} with {strategy}: {row}"
        assert all(rows[f]["users_met"] > 0 for f in ("hang", "latency")), rows  # it was live
    if strategy == "canary":
        assert set(rows["hang"]["kinds"]) == {"HTTP 504"}  # the router gave up on the silent instance


def test_an_unknown_fault_or_strategy_exits_2_naming_the_option(tmp_path: Path) -> None:
    result = demo(tmp_path, "--only", "meltdown", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "--only: no fault 'meltdown'" in result.stderr and "hang" in result.stderr
    result = demo(tmp_path, "--strategy", "canry", timeout=60)
    assert result.returncode == 2 and "--strategy: no strategy 'canry'" in result.stderr
    assert "Traceback" not in result.stderr
