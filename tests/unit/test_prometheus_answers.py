"""PrometheusSource without a server: Prometheus' JSON answers read into Counters, its
refusals and garbled answers turned into AnalysisError, templates checked when it is made.
(The same source against a real Prometheus: tests/integration/test_prometheus_source.py.)"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qs

import httpx
import pytest

from turnout.analysis.prometheus import (
    PrometheusSource,
    latency_buckets,
    subject_labels,
    vector_of,
    version_of,
)
from turnout.errors import AnalysisError, UserError
from turnout.plan import CohortSubject, RevisionSubject
from turnout.routers.base import LATENCY_BOUNDS, Counters

V1, V2 = RevisionSubject(revision="v1-0123abcd"), RevisionSubject(revision="v2-abcdef12")
REQUESTS = 'sum(demo_requests_total{version="{version}"})'
ERRORS = 'sum(demo_requests_total{version="{version}", code=~"5.."})'
LATENCY = 'sum by (le) (demo_request_seconds_bucket{version="{version}"})'


def vector(*series: tuple[Mapping[str, str], float | str]) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": dict(labels), "value": [1700000000.0, str(value)]} for labels, value in series]}}


def histogram(cumulative: Mapping[str, float]) -> dict[str, object]:
    return vector(*(({"le": le}, count) for le, count in cumulative.items()))


def full_histogram(per_bucket: list[int]) -> dict[str, str | float]:
    """The cumulative `le` series Prometheus gives for these per-bucket counts."""
    les = [*(repr(b) for b in LATENCY_BOUNDS), "+Inf"]
    total, out = 0, {}
    for le, n in zip(les, per_bucket, strict=True):
        total += n
        out[le] = total
    return out


class FakePrometheus:
    """Answers instant queries from a table of query -> JSON body, and records what it got."""

    def __init__(self, answers: Mapping[str, object], status: int = 200) -> None:
        self.answers, self.status, self.asked = answers, status, list[str]()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/prom/api/v1/query"
        query = parse_qs(request.content.decode())["query"][0]
        self.asked.append(query)
        body = self.answers.get(query, vector())
        return httpx.Response(self.status, text=body if isinstance(body, str) else json.dumps(body))


def source(fake: FakePrometheus, **kwargs: object) -> PrometheusSource:
    return PrometheusSource("http://prom.test/prom/", requests=REQUESTS, errors=ERRORS,
                            transport=httpx.MockTransport(fake), **kwargs)  # type: ignore[arg-type]


async def test_read_gives_each_subject_its_counters_and_missing_series_read_as_zero() -> None:
    fake = FakePrometheus({
        'sum(demo_requests_total{version="v2"})': vector(({}, 120)),
        'sum(demo_requests_total{version="v2", code=~"5.."})': vector(({}, 7)),
        'sum(demo_requests_total{version="v1"})': vector(({}, "1e3")),
    })
    got = await source(fake).read([V1, V2])
    assert got == {V1: Counters(requests=1000), V2: Counters(requests=120, responses_5xx=7)}
    assert len(fake.asked) == 4


async def test_the_series_of_a_query_are_added_up() -> None:
    fake = FakePrometheus({'sum(demo_requests_total{version="v2"})': vector(({"code": "200"}, 90),
                                                                            ({"code": "500"}, 10))})
    assert (await source(fake).read([V2]))[V2].requests == 100


async def test_a_latency_histogram_is_read_into_turnouts_buckets() -> None:
    per_bucket = [0] * (len(LATENCY_BOUNDS) + 1)
    per_bucket[0], per_bucket[8], per_bucket[-1] = 50, 30, 2
    fake = FakePrometheus({LATENCY.replace("{version}", "v2"): histogram(full_histogram(per_bucket)),
                           'sum(demo_requests_total{version="v2"})': vector(({}, 82))})
    got = (await source(fake, latency=LATENCY).read([V2]))[V2]
    assert got.latency == per_bucket
    assert got.quantile(0.5) == LATENCY_BOUNDS[0] and got.quantile(0.9) == LATENCY_BOUNDS[8]


def test_finer_buckets_are_folded_into_turnouts_and_go_style_bounds_match() -> None:
    cumulative = {"0.0005": 3, "0.001": 5, "1": 9, "10": 10, "+Inf": 12}  # Go writes 1, not 1.0
    for bound in LATENCY_BOUNDS:
        if bound < 1:
            cumulative.setdefault(repr(bound), 5 if bound < 0.1 else 8)
        elif bound < 10:
            cumulative.setdefault(f"{bound:g}", 9)
    counts = latency_buckets("q", vector_of("latency", "q", 200, json.dumps(histogram(cumulative))))
    assert counts[0] == 5  # 0.0005 and 0.001 together
    assert counts[LATENCY_BOUNDS.index(0.1)] == 3 and counts[LATENCY_BOUNDS.index(1.0)] == 1
    assert counts[LATENCY_BOUNDS.index(10.0)] == 1
    assert counts[-1] == 2 and sum(counts) == 12


def test_a_histogram_lacking_turnouts_bounds_is_refused_naming_them() -> None:
    cumulative = {"0.005": 1, "0.01": 2, "0.025": 3, "+Inf": 4}  # prometheus_client's defaults, say
    with pytest.raises(AnalysisError, match=r"no bucket le=0\.001, le=0\.002, le=0\.003, .*le=10"):
        latency_buckets("q", vector_of("latency", "q", 200, json.dumps(histogram(cumulative))))


def test_a_latency_series_without_le_is_refused() -> None:
    with pytest.raises(AnalysisError, match=r"without an `le` label .* aggregate it `by \(le\)`"):
        latency_buckets("q", vector_of("latency", "q", 200, json.dumps(vector(({}, 3)))))


def test_no_latency_series_reads_as_empty_buckets() -> None:
    assert latency_buckets("q", []) == [0] * (len(LATENCY_BOUNDS) + 1)


@pytest.mark.parametrize(("status", "body", "message"), [
    (400, {"status": "error", "errorType": "bad_data", "error": "1:4: parse error: unexpected"},
     "Prometheus refused the requests query 'Q': bad_data: 1:4: parse error: unexpected"),
    (503, "Service Unavailable", "answered the requests query 'Q' with HTTP 503 and no JSON"),
    (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}},
     "gave a scalar result, not an instant vector"),
    (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}, "gave a matrix result"),
    (200, {"status": "success"}, "gave a malformed result"),
    (200, vector(({}, "NaN")), "gave NaN for {}: a counter is a finite number"),
    (200, vector(({}, -1)), "gave -1 for {}"),
    (200, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
     "gave a malformed series"),
])
def test_what_prometheus_refused_or_garbled_is_an_analysis_error(status: int, body: object,
                                                                message: str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(AnalysisError) as caught:
        vector_of("requests", "Q", status, text)
    assert message in str(caught.value)


async def test_a_refused_query_fails_the_read_naming_the_rendered_query() -> None:
    refusal = {"status": "error", "errorType": "bad_data", "error": "boom"}
    fake = FakePrometheus({'sum(demo_requests_total{version="v2", code=~"5.."})': refusal}, status=400)
    with pytest.raises(AnalysisError, match=r"refused the errors query .*version=\"v2\".*: bad_data: boom"):
        await source(fake).read([V1, V2])


@pytest.mark.parametrize(("error", "message"), [
    (httpx.ConnectError("[Errno 111] Connection refused"),
     "Prometheus at http://prom.test/prom could not be reached for the requests query "
     "'sum(demo_requests_total{version=\"v2\"})': [Errno 111] Connection refused"),
    (httpx.ReadTimeout("timed out"), "Prometheus at http://prom.test/prom did not answer the requests "
                                     "query 'sum(demo_requests_total{version=\"v2\"})' within 0.5 s"),
])
async def test_an_unreachable_or_silent_server_is_an_analysis_error(error: Exception, message: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        if "code" in request.content.decode():
            return httpx.Response(200, json=vector())
        raise error
    src = PrometheusSource("http://prom.test/prom", requests=REQUESTS, errors=ERRORS, timeout=0.5,
                           transport=httpx.MockTransport(fail))
    with pytest.raises(AnalysisError) as caught:
        await src.read([V2])
    assert message in str(caught.value)


async def test_a_cohort_is_selected_by_flag_and_on_or_off() -> None:
    on, off = CohortSubject(flag="new-checkout", on=True), CohortSubject(flag="new-checkout", on=False)
    fake = FakePrometheus({
        'sum(app_requests_total{flag="new-checkout", cohort="on"})': vector(({}, 40)),
        'sum(app_requests_total{flag="new-checkout", cohort="off"})': vector(({}, 60)),
        'sum(app_errors_total{flag="new-checkout", cohort="on"})': vector(({}, 4)),
    })
    src = PrometheusSource("http://prom.test/prom", requests='sum(app_requests_total{flag="{flag}", '
                           'cohort="{cohort}"})', errors='sum(app_errors_total{flag="{flag}", '
                           'cohort="{cohort}"})', transport=httpx.MockTransport(fake))
    assert await src.read([on, off]) == {on: Counters(requests=40, responses_5xx=4),
                                         off: Counters(requests=60)}


async def test_a_subject_lacking_a_placeholder_is_a_clear_error() -> None:
    with pytest.raises(AnalysisError, match=r"the requests query .* needs \{version\}, which users with "
                                            r"flag x on does not have \(it has \{cohort\}, \{flag\}\)"):
        await source(FakePrometheus({})).read([CohortSubject(flag="x")])


def test_subject_labels_and_versions_of_revision_ids() -> None:
    assert subject_labels(V2) == {"version": "v2", "revision": "v2-abcdef12"}
    assert subject_labels(CohortSubject(flag="f", on=False)) == {"flag": "f", "cohort": "off"}
    assert version_of("1.2.3-rc-abcdef12") == "1.2.3-rc"
    assert version_of("v2-not-a-hash") == "v2-not-a-hash"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "prom:9090"}, "Prometheus URL 'prom:9090' must be http:// or https:// with a host"),
    ({"requests": 'sum(x{v="{vresion}"})'}, "requests query 'sum(x{v=\"{vresion}\"})': unknown placeholder"),
    ({"errors": "sum(x)"}, "errors query 'sum(x)' has no placeholder, so it would read the same numbers"),
    ({"latency": 'sum by (le) (x{v="{version}"}'}, "latency query"),
    ({"timeout": 0}, "timeout must be positive"),
])
def test_a_bad_source_is_refused_when_made(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"url": "http://127.0.0.1:9090", "requests": REQUESTS, "errors": ERRORS,
                               **kwargs}
    with pytest.raises(UserError) as caught:
        PrometheusSource(**args)  # type: ignore[arg-type]
    assert message in str(caught.value)
