"""End-to-end fixtures: a service folder for the bundled demo app, the real CLI, real load.

Every test drives `python -m turnout` as a subprocess in its own folder, with its own
free ports, and takes the service down afterwards, so no process outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CliFolder:
    """A folder with a spec, and the real CLI run in it (`run`, `arun`, `status`)."""

    folder: Path
    database_url: str | None = field(default=None, kw_only=True)  # None: the local file
    patience: ClassVar[float] = 120.0  # seconds a command may take

    @property
    def spec(self) -> Path:
        return self.folder / "turnout.yaml"

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "turnout", *args], check=False, cwd=self.folder, capture_output=True,
            text=True, timeout=timeout or self.patience, stdin=subprocess.DEVNULL,
            env=cli_env(self.database_url),
        )

    async def arun(self, *args: str, timeout: float | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "turnout", *args, cwd=self.folder, env=cli_env(self.database_url),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout or self.patience)
        except BaseException:
            # Cancelled (a helper task stopped) or out of time: end the command and read its
            # pipes to the end, so neither it nor its pipes outlive the test and turn into
            # ResourceWarnings in whichever test runs when they are collected.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.communicate(), 10)
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@dataclass
class Service(CliFolder):
    """The bundled demo app, three local instances, behind a router on free ports."""

    port: int = 0
    preview_port: int = 0
    router: str | None = None  # the spec's `router` (None: left out, the builtin one)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def write(self, **strategy: Any) -> None:
        spec = {
            "service": "shop",
            "listen": f"127.0.0.1:{self.port}",
            "instances": 3,
            "run": {"command": [sys.executable, "-m", "turnout.demo.app", "--port", "{port}"], "grace": "5s"},
            "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "4s"},
            "routing": {"user_key": {"header": "X-User-Id"},
                        "preview_listen": f"127.0.0.1:{self.preview_port}", "drain_timeout": "5s"},
            "strategy": strategy or {"kind": "rolling"},
        }
        if self.router is not None:
            spec["router"] = self.router
        self.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


def cli_env(database_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TURNOUT_DATABASE_URL", None)
    if database_url is not None:
        env["TURNOUT_DATABASE_URL"] = database_url
    return env


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, free_port(), free_port())
    svc.write()
    yield svc
    if (tmp_path / ".turnout").exists():
        svc.run("down", timeout=60)


def check(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


async def kill_at_first_traffic(service: CliFolder, *args: str) -> None:
    """`turnout deploy ARGS --json`, SIGKILLed right after its first change of traffic."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "deploy", *args, "--json", cwd=service.folder, env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, "deploy ended before its first route step"
        if json.loads(line).get("kind") == "traffic":
            break
    proc.kill()
    await proc.wait()
