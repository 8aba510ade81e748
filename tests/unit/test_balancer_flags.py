"""The proxy's flag settings without a process: validation, caching rules, cohort sums."""

from __future__ import annotations

import json
from typing import Any

import pytest

from turnout.flags import FlagState
from turnout.routers.proxy.flags import (
    FlagPlan,
    SettingsError,
    empty_settings,
    key_only,
    parse_settings,
)
from turnout.routers.proxy.metrics import Metrics


def rollout(name: str, *, stickiness: str = "default", **extra: Any) -> dict[str, Any]:
    strategy = {"name": "flexibleRollout",
                "parameters": {"rollout": "50", "stickiness": stickiness, "groupId": name},
                **extra}
    return {"name": name, "enabled": True, "strategies": [strategy]}


def doc(*features: dict[str, Any], segments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"version": 2, "features": list(features), "segments": segments or []}


def test_settings_keep_evaluate_and_header_when_left_out() -> None:
    current = {**empty_settings(), "evaluate": ["a"], "header": "X-F"}
    body = {"state": doc(rollout("a")), "revision": 4}
    settings, compiled = parse_settings(json.dumps(body).encode(), current)
    assert (settings["evaluate"], settings["header"], settings["revision"]) == (["a"], "X-F", 4)
    assert "a" in compiled


@pytest.mark.parametrize(("body", "field"), [
    (b"", "JSON"), (b"[]", "object"), (b'{"state": {}, "revision": 0}', "state"),
    (b'{"state": {"features": []}, "revision": 0, "header": "Cookie"}', "header"),
    (b'{"state": {"features": []}, "revision": 0, "evaluate": [1]}', "evaluate"),
    (b'{"state": {"features": []}, "revision": 0, "x": 1}', "unknown"),
    (b'{"state": {"features": []}}', "revision: required"),
    (b'{"state": {"features": []}, "revision": 1.5}', "revision"),
    (b'{"state": {"features": [], "meta": {"revision": 3}}, "revision": 2}', "meta.revision"),
])
def test_bad_settings_are_refused(body: bytes, field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        parse_settings(body, empty_settings())


def test_a_saved_file_without_a_revision_reads_as_revision_zero() -> None:
    saved = json.dumps({"state": doc(rollout("a")), "evaluate": ["a"]}).encode()
    settings, _ = parse_settings(saved, empty_settings(), revision_required=False)
    assert settings["revision"] == 0


def test_results_are_cached_only_when_they_depend_on_the_key_alone() -> None:
    assert key_only(doc(rollout("a")), ["a"])
    assert key_only(doc(), ["unknown"])
    assert not key_only(doc(rollout("a", stickiness="random")), ["a"])
    clock = {"contextName": "currentTime", "operator": "DATE_AFTER", "value": "2020-01-01T00:00:00Z"}
    assert not key_only(doc(rollout("a", constraints=[clock])), ["a"])
    address = {"contextName": "remoteAddress", "operator": "IN", "values": ["10.0.0.1"]}
    segment = {"id": 1, "name": "office", "constraints": [address]}
    assert not key_only(doc(rollout("a", segments=[1]), segments=[segment]), ["a"])
    parent = {"name": "p", "enabled": True, "strategies": [{"name": "remoteAddress"}]}
    child = {**rollout("c"), "dependencies": [{"feature": "p"}]}
    assert not key_only(doc(parent, child), ["c"])
    assert key_only(doc(parent, child, rollout("a")), ["a"])


def test_cohorts_add_up_per_flag_and_per_revision() -> None:
    metrics = Metrics()
    settings = {"state": doc(rollout("a"), rollout("b")), "evaluate": ["a", "b"], "header": "X-F"}
    plan = FlagPlan(settings, FlagState.from_json(settings["state"]), metrics.combo)
    seen = []
    for i in range(400):
        cohort = plan.cohort(b"user-%d" % i, b"127.0.0.1")
        assert plan.cohort(b"user-%d" % i, b"10.1.1.1") is cohort  # cached per key
        counters = cohort.counters("new" if i % 2 else "old")
        counters.requests += 1
        counters.response(500 if i % 4 == 1 else 200, 0.001)
        seen.append(cohort.line)
    assert len(set(seen)) == 4 and b"X-F: a=on, b=off\r\n" in seen
    stats = metrics.snapshot(1, set(), ("a", "b"))
    assert stats.revisions["new"].requests == stats.revisions["old"].requests == 200
    assert stats.revisions["new"].responses_5xx == 100
    on, off = stats.cohorts["a:on"], stats.cohorts["a:off"]
    assert on.requests + off.requests == 400
    assert on.requests == sum(line.startswith(b"X-F: a=on") for line in seen)
    assert on.responses_5xx + off.responses_5xx == 100
