"""A service folder whose spec deploys the test app to the test hosts over SSH.

The spec names the hosts by address, logs in as `deploy` with the harness's key, checks host
keys against the harness's known_hosts and uploads `release/` (the test app) to
`/srv/shop/releases/{version}` on each host. The router runs on this machine, on 127.0.0.1,
or with `router_host` on that host, listening on all its addresses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tests.e2e.conftest import CliFolder, free_port
from tests.hosts.harness import Host, HostFleet

RELEASE = Path(__file__).resolve().parent / "release"


def _fleet_required() -> HostFleet:
    raise TypeError("HostService needs the fleet: HostService(folder, fleet)")


@dataclass
class HostService(CliFolder):
    """The test app on the test hosts, two per host, behind a router on free local ports."""

    fleet: HostFleet = field(default_factory=_fleet_required)
    port: int = field(default_factory=free_port)
    preview_port: int = field(default_factory=free_port)
    router_host: Host | None = None
    patience: ClassVar[float] = 180.0

    @property
    def url(self) -> str:
        return f"http://{self.router_address}:{self.port}/"

    @property
    def router_address(self) -> str:
        return "127.0.0.1" if self.router_host is None else self.router_host.address

    def platform(self, **extra: Any) -> dict[str, Any]:
        fleet = self.fleet
        return {
            "kind": "ssh",
            "hosts": [f"{h.address}:{h.port}" if h.port != 22 else h.address for h in fleet.hosts],
            "user": fleet.user,
            "identity": str(fleet.identity),
            "known_hosts": str(fleet.known_hosts),
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
        bind = "127.0.0.1" if self.router_host is None else "0.0.0.0"
        if self.router_host is not None:
            top.setdefault("router", {"kind": "builtin", "host": self.router_host.address})
        spec = {
            "service": "shop",
            "listen": f"{bind}:{self.port}",
            "run": run or {"command": ["python3", "app.py"], "grace": "5s"},
            "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "10s"},
            "routing": {"user_key": {"header": "X-User-Id"},
                        "preview_listen": f"{bind}:{self.preview_port}", "drain_timeout": "5s"},
            "strategy": strategy or {"kind": "rolling", "max_surge": 2, "max_unavailable": 0},
            "platform": platform or self.platform(),
            **top,
        }
        self.spec.write_text(yaml.safe_dump(spec, sort_keys=False))

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
