"""An HAProxy the user runs, adopted through the real CLI: `router: {kind: haproxy, adopt: ...}`.

The user's HAProxy serves the shop and another site from a file of their own. Canary
deployments through `turnout deploy` under load fail and re-send no request and end with
only the new version answering; `turnout down` stops the instances and says it leaves the
HAProxy running, which it does, the other site still served; and every byte of the user's
file outside the shop's `server` lines is as the user wrote it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import Service, check
from tests.e2e.test_deploy import deploy_cleanly
from tests.integration.haproxy_rig import users_config
from tests.integration.test_proxy import Upstream
from tests.system import missing
from turnout import procs
from turnout.routers.haproxy import section
from turnout.routers.haproxy.process import HaproxyProcess

pytestmark = pytest.mark.slow

# The user's own HAProxy: the shop, which turnout deploys, and a site it must leave alone.
OTHER_SITE = """
frontend other   # another site
    bind 127.0.0.1:{other_port}
    default_backend static

backend static
    server st0 {static}
"""
CANARY = {"kind": "canary", "steps": [{"weight": 20}, {"pause": "600ms"}, {"weight": 60},
                                      {"pause": "600ms"}],
          "gate": {"interval": "150ms", "min_requests": 5}}


class Users:
    """The user's HAProxy and its file, before turnout touched it."""

    def __init__(self, process: HaproxyProcess, folder: Path, original: bytes, other_url: str) -> None:
        self.process, self.folder, self.original, self.other_url = process, folder, original, other_url


@pytest.fixture
async def users(service: Service) -> AsyncIterator[Users]:
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")
    folder = Path(tempfile.mkdtemp(prefix="tadc-"))  # short: UNIX socket paths
    static = await Upstream("static").start()
    other = procs.free_port("127.0.0.1")
    text = users_config(folder, port=service.port, backend="shop",
                        more=OTHER_SITE.format(other_port=other, static=static.address))
    process = HaproxyProcess(folder)
    process.config_path.write_text(text)
    try:
        await process.start()
        yield Users(process, folder, text.encode(), f"http://127.0.0.1:{other}/")
    finally:
        await process.stop()
        await static.close()
        shutil.rmtree(folder, ignore_errors=True)


def write(service: Service, users: Users) -> None:
    """The service's spec with the user's HAProxy adopted (no user key: weights only)."""
    service.write(**CANARY)
    spec = yaml.safe_load(service.spec.read_text())
    spec["routing"] = {"drain_timeout": "5s"}
    spec["router"] = {"kind": "haproxy", "adopt": {
        "socket": str(users.folder / "admin.sock"), "backend": "shop",
        "config": str(users.process.config_path)}}
    service.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


def outside_the_shops_servers(text: bytes) -> list[bytes]:
    lines = text.splitlines(keepends=True)
    mine = set(section.server_lines(text.decode(), "shop").values())
    return [line for i, line in enumerate(lines) if i not in mine]


async def test_canaries_through_an_adopted_haproxy_fail_no_request_and_leave_it_running(
    service: Service, users: Users,
) -> None:
    write(service, users)
    check(service.run("deploy", "v1"))
    master = users.process.pid()
    for version in ("v2", "v3", "v4"):
        await deploy_cleanly(service, version)
    down = service.run("down", timeout=60)
    check(down)
    assert "the adopted HAProxy runs on, its backend shop as it was" in down.stdout
    assert users.process.pid() == master  # neither restarted nor stopped
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        assert (await client.get(users.other_url)).status_code == 200  # the other site
    text = users.process.config_path.read_bytes()
    assert outside_the_shops_servers(text) == outside_the_shops_servers(users.original)
