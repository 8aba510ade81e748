"""A real HAProxy for the tests of `turnout.routers.haproxy`: a short temporary folder (its
UNIX socket paths must fit 107 bytes), a configuration of one service `web` on a free port
of 127.0.0.1 with pool backends of empty slots, and the process started and stopped."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from tests.system import missing

from turnout import procs
from turnout.routers.haproxy.config import Layout, Pool, Service, Slot, render
from turnout.routers.haproxy.process import HaproxyProcess
from turnout.routers.haproxy.runtime import Runtime

SLOTS = 3


def need_haproxy() -> None:
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")


def layout(folder: Path, port: int, *, pools: int = 2, lines: tuple[str, ...] = (),
           slots: tuple[Slot, ...] | None = None) -> Layout:
    """Service `web` on 127.0.0.1:`port`: `pools` backends web_p0.. of SLOTS slots (pool 0's
    given as `slots`), everything sent to web_p0 unless `lines` route it."""
    made = [Pool(slots=slots or (Slot(),) * SLOTS)] + [Pool(slots=(Slot(),) * SLOTS)] * (pools - 1)
    service = Service(name="web", listen=f"127.0.0.1:{port}", pools=tuple(made),
                      default_pool=0, frontend_lines=lines)
    return Layout(folder=folder, services=(service,))


class Running:
    """An HAProxy started from `layout(...)`, with its URL and runtime API client."""

    def __init__(self, process: HaproxyProcess, port: int) -> None:
        self.process = process
        self.folder = process.folder
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.runtime: Runtime = process.runtime

    def write(self, made: Layout) -> None:
        self.process.config_path.write_text(render(made))

    async def fill(self, backend: str, slot: str, address: str) -> None:
        host, port = address.rsplit(":", 1)
        await self.runtime.set_server_address(backend, slot, host, int(port))
        await self.runtime.set_server_state(backend, slot, "ready")


@asynccontextmanager
async def running_haproxy(make: Callable[[Path, int], Layout] = layout) -> AsyncIterator[Running]:
    need_haproxy()
    folder = Path(tempfile.mkdtemp(prefix="tha-"))
    process = HaproxyProcess(folder)
    port = procs.free_port("127.0.0.1")
    process.config_path.write_text(render(make(folder, port)))
    try:
        await process.start()
        yield Running(process, port)
    finally:
        await process.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def versions(client: httpx.AsyncClient, url: str, n: int) -> list[str]:
    """X-Version (or the status) of `n` GETs of `url`, one after the other."""
    seen = []
    for _ in range(n):
        answer = await client.get(url)
        seen.append(answer.headers.get("x-version", str(answer.status_code)))
    return seen


USERS_CONFIG = """\
global
    master-worker
    stats socket {folder}/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    option redispatch
    retries 2

frontend web
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
{slots}{more}"""


def users_config(folder: Path, *, port: int, backend: str, slots: int = 8, more: str = "") -> str:
    """An HAProxy configuration of a user's own, for turnout to adopt one backend of: its admin
    socket in `folder`, frontend `web` on `port` sending everything to `backend`, which holds
    `slots` placeholder servers (`server sN 127.0.0.1:1 disabled`); `more` follows it."""
    servers = "".join(f"    server s{i} 127.0.0.1:1 disabled\n" for i in range(slots))
    return USERS_CONFIG.format(folder=folder, port=port, backend=backend, slots=servers, more=more)
