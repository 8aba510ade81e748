"""A feature toggle through HAProxy: the app evaluates the flag, Prometheus counts its cohorts.

HAProxy cannot evaluate flags per request, so the demo app does (`strategy.evaluated_by:
app`): each of its processes holds turnout's flag client on a real `turnout server` over
the service's own database, which the deployment writes the ramp to. The gates read the
app's per-cohort counters from a real Prometheus server that scrapes every instance.

- Ten toggle deployments under constant load through HAProxy (each shipped blue-green, the
  switch made once Prometheus scrapes the whole green fleet) fail and re-send no request;
  once each command has ended every answer is the new code path of the new version, and
  every answer on a new code path came while the flag was on for its user (allowing the
  flag client `LAG` to hear of a change).
- A new code path that fails is caught by the gate on the app's own metrics: the flag is
  switched off, only users it was on for met errors, and the code stays, dark.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Service
from tests.e2e.flag_exposure import FlagHistory, unexplained
from tests.e2e.sdk.server_proc import ServerProcess
from tests.e2e.test_analysis import scraping
from tests.e2e.test_deploy import RATE, deploy_cleanly
from tests.prom import PrometheusServer
from tests.system import missing
from turnout.demo.load import Load
from turnout.flags.store import FlagStore

pytestmark = pytest.mark.slow

FLAG = "new-checkout"
USERS = 100
LAG = 1.0  # how long the app's flag client may trail the store (its stream: ~0.1 s)
COHORT = 'flag="{flag}",cohort="{cohort}"'
SCRAPED = Path(__file__).parent / "apps" / "scraped.py"
# Prometheus takes up a new target up to about 11 s late (two 5-second tickers, then a scrape
# each second): the green fleet is switched to once Prometheus has scraped all of it (a
# preview test), so the ramp's pause judges counters Prometheus already has.
TOGGLE: dict[str, Any] = {
    "kind": "feature-toggle", "flag": FLAG, "ship": "blue-green", "evaluated_by": "app",
    "rollback_window": "1s",
    "ramp": [{"percent": 20}, {"pause": "4s"}],
    "gate": {"interval": "500ms", "min_requests": 20, "max_error_rate": "5%"},
}


class Toggled:
    """The service, the flag server its apps ask, and what the spec says of both."""

    def __init__(self, service: Service, server: ServerProcess, token: str,
                 prometheus: PrometheusServer) -> None:
        self.service, self.server, self.token, self.prometheus = service, server, token, prometheus

    def write(self, **env: str) -> None:
        scraped = [sys.executable, str(SCRAPED), self.prometheus.url, "3"]
        self.service.write(**TOGGLE, tests=[{"command": scraped}])
        spec = yaml.safe_load(self.service.spec.read_text())
        spec["run"]["env"] = {"DEMO_FEATURE": FLAG, "DEMO_FLAGS_URL": self.server.url,
                              "DEMO_FLAGS_TOKEN": self.token, **env}
        spec["metrics"] = {
            "kind": "prometheus", "url": self.prometheus.url,
            "requests": f"sum(demo_feature_requests_total{{{COHORT}}})",
            "errors": f'sum(demo_feature_requests_total{{{COHORT},code=~"5.."}})',
        }
        self.service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))

    def history(self) -> FlagHistory:
        store = FlagStore.open(database(self.service))
        try:
            return FlagHistory.from_audit(FLAG, store.history(FLAG))
        finally:
            store.close()


def database(service: Service) -> str:
    return f"sqlite:///{service.folder / '.turnout' / 'state.db'}"


@pytest.fixture
def toggled(service: Service, prometheus: PrometheusServer) -> Iterator[Toggled]:
    """The demo service behind HAProxy, with a `turnout server` on its database."""
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")
    service.router = "haproxy"
    (service.folder / ".turnout").mkdir()
    store = FlagStore.open(database(service))
    token = store.create_token("demo-app", "client")
    store.close()
    server = ServerProcess.start(database(service))
    try:
        yield Toggled(service, server, token, prometheus)
    finally:
        service.run("down", timeout=60)
        assert server.stop() == 0


async def first_release(toggled: Toggled) -> None:
    """v1 with its ramp, under load: a ramp's pause needs traffic to judge (the router only
    starts with this deployment, so its first requests are refused: not counted here)."""
    async with Load(toggled.service.url, rate=RATE, users=USERS, max_seconds=120):
        code, out, err = await toggled.service.arun("deploy", "v1")
    assert code == 0, out + err


async def test_ten_toggles_through_haproxy_evaluated_by_the_app_fail_no_request(
    toggled: Toggled,
) -> None:
    service = toggled.service
    toggled.write()
    async with scraping(service.folder, toggled.prometheus):
        await first_release(toggled)
        for number in range(2, 12):
            new_path = f"v{number}+{FLAG}"
            load = await deploy_cleanly(service, f"v{number}", answers=new_path, users=USERS)
            on = [s for s in load.samples if s.version == new_path]
            assert unexplained(on, toggled.history(), wall=load.wall, lag=LAG) == []
    status = service.status()
    assert status["stable"]["version"] == "v11"
    assert status["deployment"] is None


async def test_a_failing_code_path_is_caught_on_the_apps_metrics_and_switched_off(
    toggled: Toggled,
) -> None:
    service = toggled.service
    toggled.write()
    async with scraping(service.folder, toggled.prometheus):
        await first_release(toggled)
        toggled.write(DEMO_FEATURE_FAIL="errors")
        async with Load(service.url, rate=RATE, users=USERS, max_seconds=120) as load:
            code, out, err = await service.arun("deploy", "v2")
            finished = time.monotonic()
            await asyncio.sleep(LAG + 0.5)
    assert code == 3, out + err
    assert "gate failed" in out and "error rate" in out and f"flag {FLAG} switched off" in out, out
    failed = [s for s in load.samples if s.failed]
    assert failed, "the new code path never ran"
    assert {s.version for s in failed} == {f"v2+{FLAG}"}  # only the new code path failed
    assert load.summary(new_version="v2").resent == 0
    on = [s for s in load.samples if s.version == f"v2+{FLAG}"]
    assert unexplained(on, toggled.history(), wall=load.wall, lag=LAG) == []
    late = [s for s in load.samples if s.sent >= finished + LAG]
    assert late and not any(s.failed for s in late)
    assert {s.version for s in late} == {"v2"}  # the code stays, dark
    assert service.status()["stable"]["version"] == "v2"

