"""Which strategies `turnout demo` runs for a router, and the line about what it leaves out."""

from __future__ import annotations

from pathlib import Path

import yaml

from turnout.demo.runner import HAPROXY_TOGGLE, STRATEGIES, strategies, write_spec
from turnout.wiring import load_spec


def test_the_builtin_router_runs_every_strategy() -> None:
    assert strategies((), "builtin") == (list(STRATEGIES), None)
    assert strategies(("feature-toggle",), "builtin") == (["feature-toggle"], None)


def test_haproxy_leaves_the_feature_toggle_out_saying_why() -> None:
    chosen, note = strategies((), "haproxy")
    assert chosen == ["big-bang", "rolling", "blue-green", "canary"]
    assert note == HAPROXY_TOGGLE
    assert "turnout server" in HAPROXY_TOGGLE and "Prometheus" in HAPROXY_TOGGLE
    assert strategies(("canary", "rolling"), "haproxy") == (["rolling", "canary"], None)
    assert strategies(("feature-toggle",), "haproxy") == ([], HAPROXY_TOGGLE)


def test_the_demo_spec_names_the_router_only_when_not_the_builtin(tmp_path: Path) -> None:
    builtin = yaml.safe_load(write_spec(tmp_path, 8080).read_text())
    assert "router" not in builtin
    spec = load_spec(write_spec(tmp_path, 8080, router="haproxy"))
    assert spec.router.kind == "haproxy"
