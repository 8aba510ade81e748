"""The pure parts of `bench/judges_real.py`: reading a deployment's stored events, counting
what each side served, the load's latency draws, the simulated twin and the summary."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from bench import judges_real

from turnout.demo.load import Sample


def _event(at: float, kind: str, **data: Any) -> dict[str, Any]:
    return {"at": at, "kind": kind, "message": "", "data": data}


def _split(at: float) -> dict[str, Any]:
    return _event(at, "traffic", weights={"v2-a": 50, "v1-b": 50})


def test_a_gate_failure_is_a_rollback_timed_from_the_canary_s_first_traffic() -> None:
    evidence = {"canary": {"seconds": 20.5, "requests": 1000}, "decided_by": "error_rate_increase"}
    events = [_event(100.0, "step"), _event(100.5, "traffic", weights={"v1-b": 100}), _split(101.0),
              _event(102.0, "gate", verdict="Inconclusive"), _event(121.6, "gate", verdict="Failed",
                                                                    evidence=evidence),
              _event(121.7, "rollback"), _event(121.8, "traffic", weights={"v1-b": 100})]
    read = judges_real.read_events(events, 3, held=False)
    assert read["outcome"] == "rolled back"
    assert math.isclose(read["detect_s"], 20.7)
    assert read["judge_s"] == 20.5 and read["decided_by"] == "error_rate_increase"
    assert read["judged_until"] == 121.7 and read["looks"] == 2


def test_a_canary_inconclusive_at_the_end_of_its_pause_is_held_even_if_rolled_back_after() -> None:
    events = [_split(1.0), _event(61.0, "gate", verdict="Inconclusive"), _event(61.1, "paused"),
              _event(61.5, "gate", verdict="Failed"), _event(61.6, "rollback")]
    read = judges_real.read_events(events, 3, held=True)
    assert read["outcome"] == "held" and read["detect_s"] is None and read["judged_until"] == 61.1
    assert read["looks"] == 1


def test_a_promoted_canary_is_judged_until_the_traffic_moves_again() -> None:
    events = [_split(1.0), _event(61.0, "gate", verdict="Successful"),
              _event(61.2, "traffic", weights={"v2-a": 100, "v1-b": 0})]
    read = judges_real.read_events(events, 0, held=False)
    assert read["outcome"] == "promoted" and read["judged_until"] == 61.2 and read["detect_s"] is None


def test_served_counts_each_side_inside_the_window_only() -> None:
    samples = [Sample(0.5, 0.6, 200, "v2", "u0", None), Sample(1.0, 1.1, 500, "v2", "u1", None),
               Sample(1.5, 1.6, 200, "v1", "u2", None), Sample(2.0, 3.0, None, None, "u3", "timeout"),
               Sample(4.0, 4.1, 200, "v2", "u4", None)]
    assert judges_real.served(samples, "v2", 1.0, 3.5) == {
        "canary_requests": 1, "canary_failed": 1, "baseline_requests": 2, "baseline_failed": 1}


def test_the_load_s_latency_draws_follow_the_simulation_s_log_normal() -> None:
    draws = judges_real.delays_ms(20_000, random.Random(1))
    assert len(draws) == 20_000 and draws != judges_real.delays_ms(20_000, random.Random(2))
    assert abs(statistics.median(draws) - 20.0) < 0.5
    p99 = sorted(draws)[int(0.99 * len(draws))]
    assert 60.0 < p99 < 68.0  # exp(0.5 * 2.326) * 20 ms = 64 ms


def test_the_real_gate_and_the_simulated_judge_share_their_criteria() -> None:
    gate, criteria = judges_real.gate(60), judges_real.criteria(60)
    assert gate["interval"] == 1.0 and gate["min_soak"] == 55.0 == criteria.min_soak
    assert (gate["max_error_rate_increase"], gate["max_p99_increase"]) == (0.01, 0.025)


def test_the_simulated_twin_rolls_back_a_canary_failing_every_request_within_seconds() -> None:
    twin = judges_real.twin(1.0, 0.0, horizon=10, rng=random.Random(1))
    assert twin["outcome"] == "rolled back" and twin["detect_s"] is not None and twin["detect_s"] <= 5
    same = judges_real.twin(0.01, 0.0, horizon=10, rng=random.Random(1))
    assert same["outcome"] == "held" and same["canary_requests"] == 500  # 50 a second, no soak yet


def test_summarise_counts_outcomes_and_spreads_the_times() -> None:
    records = [{"scenario": "x", "outcome": "rolled back", "detect_s": t} for t in (10.0, 20.0, 30.0)]
    records.append({"scenario": "x", "outcome": "held", "detect_s": None})
    row = judges_real.summarise(records, "x")
    assert (row["runs"], row["rolled back"], row["held"], row["promoted"]) == (4, 3, 1, 0)
    assert (row["median_s"], row["q1_s"], row["q3_s"], row["min_s"], row["max_s"]) == (20.0, 15.0, 25.0,
                                                                                      10.0, 30.0)
