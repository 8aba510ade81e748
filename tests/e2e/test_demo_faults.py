"""`turnout demo --faults` through the real CLI, on the pairs where a gate has to act.

A hang and a 30% share of 5xx, each deployed with a canary and with a feature toggle (the
fault behind the flag): every run must end 3, rolled back by turnout itself, with fewer
users meeting the fault than the first step's share took (by the router's own hashing:
25 of the load's 200 users for the canary's 10%, the toggle's 5 named users), and none
after the deploy command ended. Rolling, big bang and blue-green roll back only what
their health checks and tests see (a start crash, a version never healthy:
`tests/e2e/test_deploy.py` covers those for every strategy); the full table, with the
faults no strategy rolls back today, is in the README.

About 25 s on a 2-core machine (measured 24-28 s): each canary run takes 5-6 s, each
toggle run 7-8 s plus a clean big bang after it (its dark code stays serving), and the
demo's first release and teardown 5 s. The slow pairs of the full table are the toggle's
(a rolling ship before the ramp) and those not rolled back, which run their whole plan
(a canary 8 s, a toggle 9 s); a full run of the 30 pairs takes 2.7 to 3.3 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def demo(folder: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "demo", "--faults", *args], cwd=folder, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=cli_env(), check=False,
    )


def test_gates_roll_back_a_hang_and_5xx_before_more_users_than_the_first_step_met_them(
    tmp_path: Path,
) -> None:
    result = demo(tmp_path, "--json", "--only", "hang", "--only", "errors",
                  "--strategy", "canary", "--strategy", "feature-toggle", timeout=80)
    assert result.returncode == 0, result.stdout + result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    assert [(r["fault"], r["strategy"]) for r in rows] == [
        ("hang", "canary"), ("hang", "feature-toggle"), ("errors", "canary"), ("errors", "feature-toggle")]
    for row in rows:
        what = f"{row['fault']} with {row['strategy']}: {row}"
        assert (row["exit_code"], row["did"], row["rolled_back"]) == (3, "rolled back", True), what
        assert 0 < row["rollback_s"] < row["duration_s"] < 30, what
        assert row["reason"].startswith(("gate failed", "analysis failed")), what  # live traffic judged
        assert row["first_users"] == (25 if row["strategy"] == "canary" else 5), what
        # The fault reached some users, never more than the first step's (a margin of 2 for a
        # request cut while the table changed), and nobody once the command had ended.
        assert 0 < row["users_met"] <= row["first_users"] + 2, what
        assert row["users_met_after"] == 0, what
    hang = rows[0]
    assert set(hang["kinds"]) == {"HTTP 504"}  # the router gave up on the silent instance


def test_an_unknown_fault_or_strategy_exits_2_naming_the_option(tmp_path: Path) -> None:
    result = demo(tmp_path, "--only", "meltdown", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "--only: no fault 'meltdown'" in result.stderr and "hang" in result.stderr
    result = demo(tmp_path, "--strategy", "canry", timeout=60)
    assert result.returncode == 2 and "--strategy: no strategy 'canry'" in result.stderr
    assert "Traceback" not in result.stderr
