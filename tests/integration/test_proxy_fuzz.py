"""A short run of the router fuzzer (`bench/fuzz_router.py`) in the suite: hypothesis over
real sockets against a real router. The long run (ten minutes and more) is a benchmark; this
one keeps the checks (no crash, no hang, no unbounded memory) from rotting.
"""

from __future__ import annotations

import pytest
from bench.fuzz_router import run

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # CPU-bound; its counts and 3 s hang check


def test_a_short_fuzz_run_finds_no_crash_hang_or_growth() -> None:
    summary = run(seconds=15, memory_mb=8, batch=60)
    assert summary["ok"], summary
    # it ran: more than a few connections (about 400 in 15 s on an idle 2-core machine)
    assert int(summary["connections"]) > 100  # type: ignore[call-overload]
