"""The spec's `metrics`: the router's counters by default, or Prometheus queries checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout import wiring
from turnout.analysis.prometheus import PrometheusSource
from turnout.analysis.sources import RouterCounters
from turnout.errors import SpecError
from turnout.spec import PrometheusMetrics, RouterMetrics, Spec
from turnout.testing.router import FakeRouter

HEAD = "service: shop\nrun: {command: [app]}\n"
PROMETHEUS = ("metrics:\n  kind: prometheus\n  url: http://127.0.0.1:9090\n"
              "  requests: 'sum(shop_checkouts_total{version=\"{version}\"})'\n"
              "  errors: 'sum(shop_checkouts_failed_total{version=\"{version}\"})'\n")


def load(tmp_path: Path, text: str) -> Spec:
    path = tmp_path / "turnout.yaml"
    path.write_text(HEAD + text)
    return wiring.load_spec(path)


def test_gates_read_the_routers_counters_unless_told_otherwise(tmp_path: Path) -> None:
    spec = load(tmp_path, "")
    assert isinstance(spec.metrics, RouterMetrics)
    source, _ = wiring.analysis(spec, FakeRouter())
    assert isinstance(source, RouterCounters)
    assert isinstance(load(tmp_path, "metrics: router\n").metrics, RouterMetrics)


def test_prometheus_queries_make_a_prometheus_source(tmp_path: Path) -> None:
    spec = load(tmp_path, PROMETHEUS + "  timeout: 2s\n")
    metrics = spec.metrics
    assert isinstance(metrics, PrometheusMetrics) and metrics.timeout == 2.0
    source, _ = wiring.analysis(spec, FakeRouter())
    assert isinstance(source, PrometheusSource) and source.timeout == 2.0


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    (PROMETHEUS.replace('"{version}"', '"{versoin}"', 1), 6, "metrics.requests", "versoin"),
    (PROMETHEUS.replace("http://127.0.0.1:9090", "ftp://x"), 5, "metrics.url", "http:// or https://"),
    (PROMETHEUS.replace("sum(shop_checkouts_failed_total", "sum((shop_checkouts_failed_total"), 7,
     "metrics.errors", ""),
    ("metrics: {kind: prometheus, url: 'http://p:9090'}\n", 3, "metrics.requests", "missing"),
])
def test_bad_metrics_are_refused_at_their_line(tmp_path: Path, text: str, line: int, field: str,
                                               words: str) -> None:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    assert caught.value.exit_code == 2
    said = str(caught.value)
    assert f"turnout.yaml:{line}: {field}: " in said and words in said, said
