"""A throwaway Prometheus server for the tests: one per test session, started on first use.

The server runs Debian's `prometheus` binary with a config file and a data folder in a
temporary folder, on a free port of 127.0.0.1, scraping every second; never the system
service. What it scrapes is listed in files of that folder (file service discovery), one
per job, so a test adds its targets with `scrape(job, addresses)` while the server runs
and `prometheus` drops them after the test. Prometheus applies a change of targets up to
5 s later (its scrape manager reloads at most that often), and a new target's first
scrape comes within one interval after that: `wait_scraped` waits for a scrape of every
target of a job that began after a given moment, so what a test sent before it is in.

Without the binary the tests that ask for the server are skipped, except as root, where
`scripts/install-system-deps.sh` installs it: there, a missing or failing server is a
failure.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system import missing

START_TIMEOUT = 30.0
SCRAPE_INTERVAL = "1s"
CONFIG = """\
global: {{scrape_interval: {interval}, scrape_timeout: {interval}, evaluation_interval: {interval}}}
scrape_configs:
  - job_name: tests
    file_sd_configs: [{{files: [{targets}], refresh_interval: {interval}}}]
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class PrometheusServer:
    """A running throwaway server: its folder (config, data, targets, log) and address."""

    folder: Path
    proc: subprocess.Popen[bytes]
    port: int
    started_in: float = 0.0

    @classmethod
    def start(cls, binary: str) -> PrometheusServer:
        """Start one, trying another port if the first was taken meanwhile; RuntimeError
        with the server's log if it does not become ready."""
        folder = Path(tempfile.mkdtemp(prefix="turnout-prom-"))
        (folder / "targets").mkdir()
        config = CONFIG.format(interval=SCRAPE_INTERVAL,
                               targets=json.dumps(str(folder / "targets" / "*.json")))
        (folder / "prometheus.yml").write_text(config)
        problems: list[str] = []
        for _ in range(3):
            began = time.monotonic()
            server = cls(folder, cls._spawn(binary, folder, port := _free_port()), port)
            problem = server._wait_ready()
            if problem is None:
                server.started_in = time.monotonic() - began
                return server
            server._end()
            problems.append(problem)
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError("Prometheus did not start:\n" + "\n".join(problems))

    @staticmethod
    def _spawn(binary: str, folder: Path, port: int) -> subprocess.Popen[bytes]:
        with (folder / "server.log").open("ab") as log:
            return subprocess.Popen(
                [binary, f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self) -> str | None:
        """None once /-/ready answers 200; else what went wrong, with the log's tail."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited {self.proc.returncode}:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return f"not ready within {START_TIMEOUT:g} s:\n{self.log_tail()}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        log = self.folder / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def scrape(self, job: str, addresses: Sequence[str]) -> None:
        """Scrape `addresses` (host:port, path /metrics) as job `job` from now on."""
        groups = [{"targets": list(addresses), "labels": {"job": job}}]
        staged = self.folder / "targets" / f".{job}.tmp"
        staged.write_text(json.dumps(groups))
        staged.replace(self.folder / "targets" / f"{job}.json")  # never read half written

    def forget_targets(self) -> None:
        for path in (self.folder / "targets").glob("*.json"):
            path.unlink()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The series of an instant query (AssertionError if Prometheus refuses it)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            body = (await client.post(f"{self.url}/api/v1/query", data={"query": expr})).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_scraped(self, job: str, targets: int, *, after: float, timeout: float = 15.0) -> float:
        """Wait until each of the job's `targets` targets was scraped, successfully, by a
        scrape that began at or after `after` (time.time()); return how long that took."""
        began = time.monotonic()
        async with asyncio.timeout(timeout):
            while True:
                scraped = await self.query(f'timestamp(up{{job="{job}"}})')
                up = await self.query(f'up{{job="{job}"}}')
                if (len(scraped) >= targets and all(float(s["value"][1]) >= after for s in scraped)
                        and all(s["value"][1] == "1" for s in up)):
                    return time.monotonic() - began
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        try:
            self._end()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """The session's Prometheus server, started on first use."""
    binary = shutil.which("prometheus")
    if binary is None:
        message = "Prometheus is not installed (no prometheus on PATH): install Debian's prometheus package"
        missing(message)
    server = PrometheusServer.start(binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus(prometheus_server: PrometheusServer) -> Iterator[PrometheusServer]:
    """The session's server, its targets dropped after the test."""
    try:
        yield prometheus_server
    finally:
        prometheus_server.forget_targets()
