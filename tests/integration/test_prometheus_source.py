"""PrometheusSource against a real Prometheus server (`tests.prom`) scraping two real demo
app processes, v1 and a v2 whose checkouts fail behind a 200: what the source reads per
version is exactly what the test sent, the business metric's failures included."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from tests.prom import PrometheusServer

from turnout.analysis.prometheus import PrometheusSource
from turnout.errors import AnalysisError
from turnout.plan import RevisionSubject
from turnout.routers.base import LATENCY_BOUNDS, Counters

pytestmark = pytest.mark.timeout(60)
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
JOB = "prometheus-source-test"
# v2's version is a label value that breaks any query it is pasted into unescaped: quotes,
# a backslash, braces, and a regex's dot (the latency query matches it with =~).
V2_VERSION = 'v2.0 "rc" \\ {x}'
V1, V2 = RevisionSubject(revision="v1-0123abcd"), RevisionSubject(revision=f"{V2_VERSION}-abcdef12")
REQUESTS = f'sum(demo_requests_total{{job="{JOB}", version="{{version}}"}})'
ERRORS = f'sum(demo_requests_total{{job="{JOB}", version="{{version}}", code=~"5.."}})'
LATENCY = f'sum by (le) (demo_request_seconds_bucket{{job="{JOB}", version=~"{{version}}"}})'
CHECKOUTS = f'sum(demo_checkouts_total{{job="{JOB}", version="{{version}}"}})'
CHECKOUTS_FAILED = f'sum(demo_checkouts_failed_total{{job="{JOB}", version="{{version}}"}})'
PAGES, CHECKOUT_COUNT, SLOW = 60, 40, 10  # requests sent to each app
SLOW_BUCKET = LATENCY_BOUNDS.index(0.03)  # where /slow?ms=25 lands


@asynccontextmanager
async def demo_app(version: str, **env: str) -> AsyncIterator[str]:
    """A demo app process on a free port of 127.0.0.1; yields its host:port."""
    full = {**os.environ, "TURNOUT_VERSION": version, **env}
    full.pop("PORT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.demo.app", "--port", "0", env=full,
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        match = LISTENING.search(line)
        assert match, f"the demo app did not start: {line!r}"
        yield f"127.0.0.1:{int(match.group(1))}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class Sent:
    """What one app answered, as the client saw it."""

    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    statuses: list[int] = field(default_factory=list)
    checkouts_failed: int = 0
    failed_behind_200: int = 0  # checkouts that failed with a status the router calls fine

    def traffic(self) -> Counters:
        return Counters(requests=len(self.statuses), responses_5xx=sum(s >= 500 for s in self.statuses),
                        latency=self.latency)


async def send_load(address: str) -> Sent:
    """PAGES + CHECKOUT_COUNT + SLOW requests, one after another on one connection."""
    sent = Sent()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=5, trust_env=False) as client:
        for i in range(PAGES + CHECKOUT_COUNT + SLOW):
            if i < PAGES:
                response = await client.get(f"/page/{i}")
            elif i < PAGES + CHECKOUT_COUNT:
                response = await client.post("/checkout", content=b"{}")
                if response.status_code >= 500 or response.json()["checkout"] == "failed":
                    sent.checkouts_failed += 1
                    sent.failed_behind_200 += response.status_code == 200
            else:
                response = await client.get("/slow", params={"ms": "25"})
            sent.statuses.append(response.status_code)
            sent.latency[SLOW_BUCKET if i >= PAGES + CHECKOUT_COUNT else 0] += 1
    return sent


async def test_source_reads_per_version_counters_and_business_failures(prometheus: PrometheusServer) -> None:
    began = time.monotonic()
    traffic = PrometheusSource(prometheus.url, requests=REQUESTS, errors=ERRORS, latency=LATENCY)
    checkouts = PrometheusSource(prometheus.url, requests=CHECKOUTS, errors=CHECKOUTS_FAILED)
    async with demo_app("v1") as v1, demo_app(V2_VERSION, DEMO_ERROR_RATE="0.1",
                                              DEMO_CHECKOUT_FAIL_RATE="0.5") as v2:
        prometheus.scrape(JOB, [v1, v2])
        first = await prometheus.wait_scraped(JOB, 2, after=time.time())
        before = await traffic.read([V1, V2])
        assert before == {V1: Counters(), V2: Counters()}  # series at zero or missing: zero
        assert await checkouts.read([V1, V2]) == {V1: Counters(), V2: Counters()}

        sent_v1, sent_v2 = await asyncio.gather(send_load(v1), send_load(v2))
        last = await prometheus.wait_scraped(JOB, 2, after=time.time())
        after = await traffic.read([V1, V2])
        business = await checkouts.read([V1, V2])

    assert after == {V1: sent_v1.traffic(), V2: sent_v2.traffic()}
    assert after[V1].responses_5xx == 0 and after[V2].responses_5xx > 0
    assert after[V2].minus(before[V2]) == sent_v2.traffic()
    assert after[V2].quantile(0.5) == LATENCY_BOUNDS[0] and after[V2].quantile(0.99) == 0.03
    # The business metric: v2's checkouts fail behind 200s the router would call fine.
    assert business == {V1: Counters(requests=CHECKOUT_COUNT),
                        V2: Counters(requests=CHECKOUT_COUNT, responses_5xx=sent_v2.checkouts_failed)}
    assert sent_v2.failed_behind_200 > 0 and sent_v1.checkouts_failed == 0
    print(f"first scrape after {first:.1f} s, last after {last:.1f} s, "
          f"whole test {time.monotonic() - began:.1f} s")


async def test_refused_queries_and_an_unreachable_server_are_analysis_errors(
    prometheus: PrometheusServer,
) -> None:
    rate = REQUESTS.replace("sum(", "sum(rate(").replace("})", "}))")  # rate() of an instant vector
    with pytest.raises(AnalysisError) as caught:
        await PrometheusSource(prometheus.url, requests=rate, errors=ERRORS).read([V1])
    message = str(caught.value)
    assert message.startswith("Prometheus refused the requests query "
                              f"'sum(rate(demo_requests_total{{job=\"{JOB}\", version=\"v1\"}}))': ")
    assert "bad_data" in message and "range vector" in message

    scalar = PrometheusSource(prometheus.url, requests=f"scalar({REQUESTS})", errors=ERRORS)
    with pytest.raises(AnalysisError, match="gave a scalar result, not an instant vector"):
        await scalar.read([V2])

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    gone = PrometheusSource(f"http://127.0.0.1:{closed}", requests=REQUESTS, errors=ERRORS, timeout=2)
    with pytest.raises(AnalysisError, match=rf"Prometheus at http://127\.0\.0\.1:{closed} could not be "
                                            "reached for the (requests|errors) query"):
        await gone.read([V1])
