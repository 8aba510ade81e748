"""The proxy's counters without a process: where a request retried on another revision counts."""

from __future__ import annotations

from pathlib import Path

from turnout.routers.proxy.metrics import Metrics


def test_a_request_moved_to_another_revision_keeps_its_flag_combination(tmp_path: Path) -> None:
    metrics = Metrics()
    assert metrics.moved(metrics.revision("new"), "old") is metrics.revision("old")
    combo = metrics.combo(("a:on", "b:off"), "new")
    assert metrics.moved(combo, "old") is metrics.combo(("a:on", "b:off"), "old")

    metrics.save(tmp_path)  # a new worker reads the counters saved by the last one
    restarted = Metrics()
    restarted.load(tmp_path)
    loaded = restarted.combos[("a:on", "b:off"), "new"]
    assert restarted.moved(loaded, "old") is restarted.combos[("a:on", "b:off"), "old"]
    assert restarted.moved(loaded, "other") is restarted.combo(("a:on", "b:off"), "other")
    assert restarted.moved(restarted.revision("new"), "other") is restarted.revision("other")
    assert not any(c.keys for c in restarted.revisions.values())
