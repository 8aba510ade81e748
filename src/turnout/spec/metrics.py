"""Where gates read their metrics: the router's own counters (the default), or Prometheus.

```yaml
metrics:
  kind: prometheus
  url: http://127.0.0.1:9090
  requests: 'sum(shop_checkouts_total{version="{version}"})'
  errors: 'sum(shop_checkouts_failed_total{version="{version}"})'
  latency: 'sum by (le) (shop_request_seconds_bucket{version="{version}"})'   # optional
```

Each query is a PromQL template of cumulative values (never a `rate()`), filled for the
subject a gate watches: `{version}` and `{revision}` for a revision, `{flag}` and `{cohort}`
(on/off) for a flag's cohort (see `turnout.analysis.promql`). A template is checked here,
so a bad one is refused with its file, line and field before anything starts.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from turnout.analysis.promql import check_template
from turnout.spec.values import Strict, kind_shorthand
from turnout.units import Duration


class RouterMetrics(Strict):
    """The router's own counters per revision and per flag cohort."""

    kind: Literal["router"] = "router"


class PrometheusMetrics(Strict):
    """Counters the app exports, read from a Prometheus server with PromQL instant queries."""

    kind: Literal["prometheus"] = "prometheus"
    url: str = Field(description="the Prometheus server, e.g. http://prometheus.internal:9090")
    requests: str = Field(description="PromQL: the requests (or events) so far of one subject")
    errors: str = Field(description="PromQL: the failed ones among them so far")
    latency: str | None = Field(
        default=None, description="PromQL: a cumulative histogram by `le` holding turnout's bounds",
    )
    timeout: Duration = Field(default=5.0, gt=0, description="for one query")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("requests", "errors", "latency")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        problems = [] if value is None else check_template(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


def _metrics_tag(value: object) -> str:
    kind = value.get("kind", "router") if isinstance(value, dict) else getattr(value, "kind", None)
    return "prometheus" if kind == "prometheus" else "router"


MetricsField = Annotated[
    Annotated[RouterMetrics, Tag("router")] | Annotated[PrometheusMetrics, Tag("prometheus")],
    Discriminator(_metrics_tag),
    BeforeValidator(kind_shorthand),
]
