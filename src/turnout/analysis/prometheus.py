"""`PrometheusSource`: a metric source that reads counters the app exports, from Prometheus.

The router sees statuses and latency; the app knows more (a checkout that failed behind a
200). This source asks Prometheus for that, with PromQL templates (`turnout.analysis.promql`)
filled with the watched subject's label values: `requests` and `errors` give one number
each (the values of every series returned are added up), `latency` optionally gives a
cumulative histogram by `le`. Each is an instant query (`/api/v1/query`) of CUMULATIVE
values, such as `sum(demo_requests_total{version="{version}"})`, never a `rate()`: the
engine takes a reading at the start of a step and at each look and judges the difference,
exactly as with the router's own counters.

What Prometheus answers becomes `Counters`: `errors` goes into `responses_5xx`, a latency
histogram's buckets into the `LATENCY_BOUNDS` buckets (every one of those bounds and +Inf
must be among its `le` values; finer buckets are folded in, missing ones refused). A query
with no series (no traffic yet) reads as zero. An unreachable server, a refused query or
an answer that is not a vector of numbers raises `AnalysisError` naming the query and what
Prometheus said; a bad template is a `UserError` when the source is made.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from turnout.analysis.promql import QueryTemplate
from turnout.errors import AnalysisError, UserError
from turnout.plan import CohortSubject, RevisionSubject, Subject, describe_subject
from turnout.routers.base import LATENCY_BOUNDS, Counters

LabelsOf = Callable[[Subject], Mapping[str, str]]
Sample = tuple[dict[str, str], float]
_REVISION_HASH = re.compile(r"-[0-9a-f]{8}$")


def version_of(revision: str) -> str:
    """The version a revision id was made from (`v2-abcdef12` -> `v2`)."""
    return _REVISION_HASH.sub("", revision)


def subject_labels(subject: Subject) -> dict[str, str]:
    """The placeholders' values for a subject: a revision's version and id, or a cohort's
    flag and `on`/`off`."""
    match subject:
        case RevisionSubject(revision=revision):
            return {"version": version_of(revision), "revision": revision}
        case CohortSubject(flag=flag, on=on):
            return {"flag": flag, "cohort": "on" if on else "off"}
    raise TypeError(f"not a subject: {subject!r}")  # pragma: no cover


class PrometheusSource:
    """Counters per subject from PromQL instant queries (see the module docstring).

    `url` is the server's base URL (`http://127.0.0.1:9090`, or one with a path prefix);
    `labels` gives a subject's placeholder values (default `subject_labels`); `timeout`
    bounds each query in seconds; `headers` go with every query (an Authorization, say);
    `transport` replaces the network, for tests.
    """

    def __init__(self, url: str, *, requests: str, errors: str, latency: str | None = None,
                 labels: LabelsOf = subject_labels, timeout: float = 5.0,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"Prometheus URL {url!r} must be http:// or https:// with a host")
        if timeout <= 0:
            raise UserError(f"Prometheus query timeout must be positive; got {timeout}")
        self.url = url.rstrip("/")
        self.queries = {"requests": _template("requests", requests), "errors": _template("errors", errors)}
        if latency is not None:
            self.queries["latency"] = _template("latency", latency)
        self.labels = labels
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._transport = transport

    async def read(self, subjects: Sequence[Subject]) -> dict[Subject, Counters]:
        """The counters of each subject, read at once. AnalysisError if any query fails."""
        wanted = [(subject, name, self._render(subject, name)) for subject in subjects
                  for name in self.queries]
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers,
                                     transport=self._transport) as client:
            answers = await _all([self._query(client, name, query) for _, name, query in wanted])
        found: dict[Subject, dict[str, tuple[str, list[Sample]]]] = {subject: {} for subject in subjects}
        for (subject, name, query), samples in zip(wanted, answers, strict=True):
            found[subject][name] = (query, samples)
        return {subject: _counters(found[subject]) for subject in subjects}

    def _render(self, subject: Subject, name: str) -> str:
        template = self.queries[name]
        values = self.labels(subject)
        missing = sorted(template.placeholders - set(values))
        if missing:
            raise AnalysisError(
                f"the {name} query {template.text!r} needs "
                f"{', '.join('{' + m + '}' for m in missing)}, which {describe_subject(subject)} "
                f"does not have (it has {', '.join('{' + v + '}' for v in sorted(values)) or 'none'})")
        return template.render(values)

    async def _query(self, client: httpx.AsyncClient, name: str, query: str) -> list[Sample]:
        where = f"Prometheus at {self.url}"
        try:
            response = await client.post(f"{self.url}/api/v1/query", data={"query": query})
        except httpx.TimeoutException:
            raise AnalysisError(f"{where} did not answer the {name} query {query!r} within "
                                f"{self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise AnalysisError(f"{where} could not be reached for the {name} query {query!r}: "
                                f"{str(exc) or type(exc).__name__}") from None
        return vector_of(name, query, response.status_code, response.text)


def vector_of(name: str, query: str, status: int, text: str) -> list[Sample]:
    """The samples of an instant query's JSON answer; AnalysisError unless it is a vector."""
    try:
        body: Any = json.loads(text)
    except ValueError:
        raise AnalysisError(f"Prometheus answered the {name} query {query!r} with HTTP {status} "
                            f"and no JSON: {text[:200]!r}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        said = body.get("error", text[:200]) if isinstance(body, dict) else text[:200]
        kind = body.get("errorType", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
        raise AnalysisError(f"Prometheus refused the {name} query {query!r}: {kind}: {said}")
    data = body.get("data")
    if not isinstance(data, dict):
        data = {}
    kind = data.get("resultType")
    if kind != "vector" or not isinstance(data.get("result"), list):
        raise AnalysisError(f"the {name} query {query!r} gave a {kind or 'malformed'} result, not an "
                            "instant vector: write it as a selector or an aggregation such as sum(...)")
    return [_sample(name, query, series) for series in data["result"]]


def _sample(name: str, query: str, series: Any) -> Sample:
    try:
        labels, (_, raw) = dict(series["metric"]), series["value"]
        value = float(raw)
    except (KeyError, TypeError, ValueError):
        raise AnalysisError(f"the {name} query {query!r} gave a malformed series: {series!r}") from None
    if not math.isfinite(value) or value < 0:
        raise AnalysisError(f"the {name} query {query!r} gave {raw} for {labels}: a counter is a finite "
                            "number, never negative")
    return labels, value


def _counters(answers: Mapping[str, tuple[str, list[Sample]]]) -> Counters:
    """One subject's counters from its queries' samples (by query name)."""
    counters = Counters(requests=_total(answers["requests"][1]),
                        responses_5xx=_total(answers["errors"][1]))
    if "latency" in answers:
        counters.latency = latency_buckets(*answers["latency"])
    return counters


def _total(samples: list[Sample]) -> int:
    return round(sum(value for _, value in samples))


def latency_buckets(query: str, samples: list[Sample]) -> list[int]:
    """Cumulative `le` buckets as counts per LATENCY_BOUNDS bucket (+Inf last)."""
    cumulative: dict[float, float] = {}
    for labels, value in samples:
        if "le" not in labels:
            raise AnalysisError(f"the latency query {query!r} gave a series without an `le` label "
                                f"({labels}): aggregate it `by (le)`")
        try:
            bound = float(labels["le"])
        except ValueError:
            raise AnalysisError(f"the latency query {query!r} gave le={labels['le']!r}, "
                                "not a number") from None
        cumulative[bound] = cumulative.get(bound, 0.0) + value
    if not cumulative:
        return [0] * (len(LATENCY_BOUNDS) + 1)
    wanted = (*LATENCY_BOUNDS, math.inf)
    found = {want: next((v for b, v in cumulative.items() if math.isclose(b, want)), None)
             for want in wanted}
    missing = [("+Inf" if b == math.inf else f"{b:g}") for b, v in found.items() if v is None]
    if missing:
        raise AnalysisError(f"the latency query {query!r} has no bucket le={', le='.join(missing)}: "
                            f"its histogram's buckets must include turnout's bounds {list(LATENCY_BOUNDS)}")
    totals = [round(found[b] or 0.0) for b in wanted]
    return [max(0, now - before) for now, before in zip(totals, [0, *totals[:-1]], strict=True)]


def _template(name: str, text: str) -> QueryTemplate:
    template = QueryTemplate.parse(text, name=name)
    if not template.placeholders:
        raise UserError(f"{name} query {text!r} has no placeholder, so it would read the same numbers "
                        "for every subject: select by \"{version}\", \"{revision}\", \"{flag}\" or "
                        "\"{cohort}\"")
    return template


async def _all(calls: list[Coroutine[Any, Any, list[Sample]]]) -> list[list[Sample]]:
    """Run the queries together; the first AnalysisError cancels the others and is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except ExceptionGroup as failed:
        first = next((e for e in failed.exceptions if isinstance(e, AnalysisError)), None)
        if first is None:
            raise
        raise first from None
    return [task.result() for task in tasks]
