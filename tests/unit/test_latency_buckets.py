"""The latency histogram's buckets, and counters kept in the buckets turnout used before."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from turnout.routers.base import LATENCY_BOUNDS, OLD_LATENCY_BOUNDS, Counters, latency_buckets
from turnout.routers.proxy.metrics import Metrics
from turnout.statedir import RouterFiles


def test_the_bounds_grow_at_most_twofold_and_keep_every_old_bound() -> None:
    assert list(LATENCY_BOUNDS) == sorted(set(LATENCY_BOUNDS))
    assert all(b / a <= 2.0 for a, b in pairwise(LATENCY_BOUNDS))
    assert set(OLD_LATENCY_BOUNDS) <= set(LATENCY_BOUNDS)


def test_old_buckets_move_to_the_bucket_with_the_same_bound() -> None:
    old = list(range(1, len(OLD_LATENCY_BOUNDS) + 2))  # 1 in <=1 ms ... 14 over 10 s
    moved = latency_buckets(old)
    assert len(moved) == len(LATENCY_BOUNDS) + 1 and sum(moved) == sum(old)
    assert moved[LATENCY_BOUNDS.index(0.05)] == old[OLD_LATENCY_BOUNDS.index(0.05)]
    assert moved[-1] == old[-1]
    assert moved[LATENCY_BOUNDS.index(0.075)] == 0  # no bound of old falls there
    counters = Counters(requests=sum(old), latency=old)  # as an older router serves them
    assert counters.latency == moved
    assert counters.quantile(0.5) == Counters(requests=sum(old), latency=moved).quantile(0.5)
    with pytest.raises(ValueError, match="buckets"):
        latency_buckets([0, 1, 2])


def test_counters_saved_with_the_old_buckets_are_read_into_the_new(tmp_path: Path) -> None:
    old = [0] * (len(OLD_LATENCY_BOUNDS) + 1)
    old[OLD_LATENCY_BOUNDS.index(0.02)] = 7
    saved = {"revisions": {"v1-abc": [7, 1, 0, old, {"502": 1}]}, "combos": [],
             "unrouted": [0, 0, 0, [0] * (len(OLD_LATENCY_BOUNDS) + 1), {}]}
    RouterFiles(tmp_path).counters.write_text(json.dumps(saved))
    metrics = Metrics()
    metrics.load(tmp_path)
    counters = metrics.revisions["v1-abc"].counters()
    assert counters.requests == 7 and counters.latency[LATENCY_BOUNDS.index(0.02)] == 7
    assert counters.quantile(0.99) == 0.02
