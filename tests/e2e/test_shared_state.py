"""Two control planes sharing one PostgreSQL state database (`TURNOUT_DATABASE_URL`).

Each "machine" is its own copy of the spec folder, with its own `.turnout` folder, router
and instances; only the database is shared. Two `turnout deploy` started at once for the
same service: exactly one deploys, the other exits 1 naming the holder, and nothing of
the loser's runs (no router, no instance).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Service, check, cli_env, free_port

pytestmark = pytest.mark.slow


def processes_in(folder: Path) -> list[str]:
    """Every process working in `folder` or below (its instances, its router), as "pid argv"."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(f"{entry.name} {argv}")
    return found


@pytest.fixture
def machines(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Service, Service]]:
    pair = []
    for name in ("machine-a", "machine-b"):
        (tmp_path / name).mkdir()
        pair.append(Service(tmp_path / name, free_port(), free_port(), database_url=postgres_url))
        pair[-1].write()
    yield pair[0], pair[1]
    for machine in pair:
        if (machine.folder / ".turnout").exists():
            machine.run("down", timeout=60)


async def deploy(machine: Service, version: str) -> tuple[int, int, str]:
    """`turnout deploy VERSION` on `machine`: its pid, exit code and standard error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "deploy", version, cwd=machine.folder,
        env=cli_env(machine.database_url), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.pid, proc.returncode, err.decode()


async def test_two_control_planes_racing_for_one_service(machines: tuple[Service, Service]) -> None:
    results = await asyncio.gather(*(deploy(machine, "v1") for machine in machines))
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 1], results
    won = next(i for i, (_, code, _) in enumerate(results) if code == 0)
    winner, loser = machines[won], machines[1 - won]
    winner_pid, loser_err = results[won][0], results[1 - won][2]
    pattern = (rf"^error: deployment #\d+ of v1 is in progress for shop, held by \S+@\S+ "
               rf"pid {winner_pid} until \d\d:\d\d:\d\d; watch it with `turnout status`")
    assert re.search(pattern, loser_err, re.MULTILINE), loser_err

    assert processes_in(loser.folder) == []
    assert not (loser.folder / ".turnout" / "router").exists()
    running = processes_in(winner.folder)
    assert sum("turnout.demo.app" in p for p in running) == 3, running
    assert any("turnout.routers.proxy" in p for p in running), running
    for machine in machines:  # one state, seen the same from both
        status = machine.status()
        assert status["stable"]["version"] == "v1" and status["deployment"] is None
        assert len(status["instances"]) == 3
    history = winner.run("history", "--json")
    check(history)
    assert history.stdout.count('"version": "v1"') == 1, history.stdout  # one deployment in all
