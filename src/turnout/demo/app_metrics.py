"""The demo app's Prometheus metrics, and a business metric the router cannot see.

`GET /metrics` answers, in Prometheus' text format (with `prometheus-client`):

    demo_requests_total{version, code}    every answered request but /metrics and /healthz
    demo_request_seconds{version}         a histogram of their time in the app (its added
                                          delay: DEMO_LATENCY_MS, /slow; the rest is
                                          microseconds), bucketed at turnout's LATENCY_BOUNDS
    demo_checkouts_total{version}         requests to /checkout
    demo_checkouts_failed_total{version}  those that failed: a 5xx, or a 200 whose body says
                                          `"checkout": "failed"`
    demo_feature_requests_total{flag, cohort, code}
                                          with DEMO_FEATURE=FLAG only: the same requests by
                                          cohort, `on` for those that took the new code path
                                          (however the flag was evaluated), else `off`
    demo_feature_request_seconds{flag, cohort}
                                          with DEMO_FEATURE only: their time in the app, as
                                          demo_request_seconds, by cohort

`DEMO_CHECKOUT_FAIL_RATE=0.3` makes that share of /checkout fail behind a 200, so a version
can be bad on a number only the app knows, which a `PrometheusSource` reads and the
router's counters never show; the cohort series let a feature toggle's gates compare
the new code path with the old one when the app evaluates the flag itself (no router
involved). Each app has its own registry, so several apps in one
process (tests) count apart.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from turnout.routers.base import LATENCY_BOUNDS

METRICS_PATH = b"/metrics"
CHECKOUT_PATH = b"/checkout"


class AppMetrics:
    """One app's counters; `observe` each answer, `checkout` each /checkout."""

    def __init__(self, version: str, *, checkout_fail_rate: float = 0.0, feature: str = "",
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= checkout_fail_rate <= 1.0:
            raise ValueError(f"DEMO_CHECKOUT_FAIL_RATE must be between 0 and 1; got {checkout_fail_rate}")
        self.version = version
        self.checkout_fail_rate = checkout_fail_rate
        self._rng = rng or random.Random()
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("demo_requests", "Requests answered, by status code",
                                 ["version", "code"], registry=self.registry)
        self._seconds = Histogram("demo_request_seconds", "Time the app took to answer",
                                  ["version"], buckets=LATENCY_BOUNDS,
                                  registry=self.registry).labels(version)
        self._checkouts = Counter("demo_checkouts", "Checkouts attempted", ["version"],
                                  registry=self.registry).labels(version)
        self._checkouts_failed = Counter("demo_checkouts_failed", "Checkouts that failed",
                                         ["version"], registry=self.registry).labels(version)
        self._by_code: dict[int, Counter] = {}
        self.feature = feature
        self._cohorts: dict[tuple[bool, int], Counter] = {}
        self._cohort_seconds: dict[bool, Histogram] = {}
        if feature:
            self._feature_requests = Counter(
                "demo_feature_requests", "Requests answered, by feature cohort and status code",
                ["flag", "cohort", "code"], registry=self.registry)
            seconds = Histogram(
                "demo_feature_request_seconds", "Time the app took to answer, by feature cohort",
                ["flag", "cohort"], buckets=LATENCY_BOUNDS, registry=self.registry)
            self._cohort_seconds = {on: seconds.labels(feature, _cohort(on)) for on in (False, True)}

    @classmethod
    def from_env(cls, env: Mapping[str, str], version: str, feature: str = "") -> AppMetrics:
        """The metrics of a process, with DEMO_CHECKOUT_FAIL_RATE and the cohort series of flag
        `feature` (if any); ValueError names a bad value."""
        raw = env.get("DEMO_CHECKOUT_FAIL_RATE", "").strip()
        try:
            rate = float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(f"DEMO_CHECKOUT_FAIL_RATE must be a number; got {raw!r}") from None
        return cls(version, checkout_fail_rate=rate, feature=feature)

    def observe(self, status: int, seconds: float, new_path: bool = False) -> None:
        """Count one answer with its status and its time in the app; with a feature, also in
        its cohort (`new_path`: it took the new code path)."""
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._requests.labels(self.version, str(status))
        child.inc()
        self._seconds.observe(seconds)
        if self.feature:
            cohort = self._cohorts.get((new_path, status))
            if cohort is None:
                cohort = self._cohorts[new_path, status] = self._feature_requests.labels(
                    self.feature, _cohort(new_path), str(status))
            cohort.inc()
            self._cohort_seconds[new_path].observe(seconds)

    def checkout(self, status: int, body: bytes) -> bytes:
        """Count one /checkout answered `status`; a 200's JSON body says whether it went
        through (DEMO_CHECKOUT_FAIL_RATE of them do not)."""
        self._checkouts.inc()
        failed = status >= 500 or (status == 200 and self.checkout_fail_rate > 0
                                   and self._rng.random() < self.checkout_fail_rate)
        if failed:
            self._checkouts_failed.inc()
        if status != 200 or not body.endswith(b"}"):
            return body
        return body[:-1] + (b', "checkout": "failed"}' if failed else b', "checkout": "ok"}')

    def exposition(self) -> tuple[bytes, bytes]:
        """The body and content type of `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()


def _cohort(new_path: bool) -> str:
    return "on" if new_path else "off"
