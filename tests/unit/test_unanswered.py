"""Requests still waiting for an answer are no successes: a hung canary is not passed."""

from __future__ import annotations

from turnout.analysis.judge import Criteria, ThresholdJudge, Verdict, Window
from turnout.analysis.sequential import SequentialJudge
from turnout.analysis.sources import counters_of
from turnout.plan import RevisionSubject
from turnout.routers.base import Counters, RouterStats
from turnout.testing.router import traffic

CANARY = RevisionSubject(revision="v2-abcdef12")
CRITERIA = Criteria(max_error_rate=0.02, max_p99=0.25, min_requests=20)


def test_the_routers_in_flight_requests_are_read_per_revision() -> None:
    stats = RouterStats(revisions={"v2-abcdef12": Counters(requests=30)},
                        in_flight={"v2-abcdef12-0": 14, "v2-abcdef12-1": 16, "v1-00000000-0": 3})
    counters = counters_of(stats, CANARY)
    assert (counters.requests, counters.in_flight, counters.finished) == (30, 30, 0)
    later = Counters(requests=50, in_flight=5)
    assert later.minus(counters).in_flight == 5  # a gauge: the later reading's


def test_a_canary_whose_requests_all_hang_is_not_passed() -> None:
    hung = Window(CANARY, Counters(requests=30, in_flight=30), 5.0)
    for judge in (ThresholdJudge(), SequentialJudge()):
        decision = judge.judge(hung, None, CRITERIA)
        assert decision.verdict is Verdict.INCONCLUSIVE, decision.reason
    answered = Window(CANARY, traffic(30), 5.0)
    assert ThresholdJudge().judge(answered, None, CRITERIA).verdict is Verdict.SUCCESSFUL


def test_the_error_rate_is_over_answered_requests() -> None:
    counters = Counters(requests=40, in_flight=20, connection_errors=10)
    assert counters.error_rate == 0.5
    decision = ThresholdJudge().judge(Window(CANARY, counters, 5.0), None, CRITERIA)
    assert decision.verdict is Verdict.FAILED and "over 20 requests" in decision.reason
