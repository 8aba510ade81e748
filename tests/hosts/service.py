"""A service folder whose spec deploys the test app to the test hosts over SSH.

The spec names the hosts by address, logs in as `deploy` with the harness's key, checks host
keys against the harness's known_hosts and uploads `release/` (the test app) to
`/srv/shop/releases/{version}` on each host. The router runs on this machine, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import cli_env, free_port
from tests.hosts.harness import HostFleet

RELEASE = Path(__file__).resolve().parent / "release"


@dataclass
class HostService:
    folder: Path
    fleet: HostFleet
    port: int = field(default_factory=free_port)
    preview_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def spec(self) -> Path:
        return self.folder / "turnout.yaml"

    def platform(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "ssh",
            "hosts": [f"{h.address}:{h.port}" if h.port != 22 else h.address for h in self.fleet.hosts],
            "user": self.fleet.user,
            "identity": str(self.fleet.identity),
            "known_hosts": str(self.fleet.known_hosts),
            "instances_per_host": 2,
            "release": {"upload": "./release", "to": "/srv/shop/releases/{version}"},
            "command_timeout": "8s",
            "connect_timeout": "3s",
            **extra,
        }

    def write(self, strategy: dict[str, Any] | None = None, *, run: dict[str, Any] | None = None,
              platform: dict[str, Any] | None = None, **top: Any) -> None:
        if not (self.folder / "release").exists():
            shutil.copytree(RELEASE, self.folder / "release",
                            ignore=shutil.ignore_patterns("__pycache__"))
        spec = {
            "service": "shop",
            "listen": f"127.0.0.1:{self.port}",
            "run": run or {"command": ["python3", "app.py"], "grace": "5s"},
            "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "10s"},
            "routing": {"user_key": {"header": "X-User-Id"},
                        "preview_listen": f"127.0.0.1:{self.preview_port}", "drain_timeout": "5s"},
            "strategy": strategy or {"kind": "rolling", "max_surge": 2, "max_unavailable": 0},
            "platform": platform or self.platform(),
            **top,
        }
        self.spec.write_text(yaml.safe_dump(spec, sort_keys=False))

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "turnout", *args], check=False, cwd=self.folder,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=cli_env(),
        )

    async def arun(self, *args: str, timeout: float = 180) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "turnout", *args, cwd=self.folder, env=cli_env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def units(self) -> dict[str, list[str]]:
        """The turnout units running on each host, as the host's own systemd lists them."""
        found: dict[str, list[str]] = {}
        for host in self.fleet.hosts:
            out = self.fleet.exec(host, ["runuser", "-u", "deploy", "--", "env",
                                         "XDG_RUNTIME_DIR=/run/user/1000", "systemctl", "--user",
                                         "list-units", "--plain", "--no-legend", "--state=active",
                                         "turnout-*"])
            found[host.address] = sorted(line.split()[0] for line in out.stdout.splitlines() if line)
        return found
