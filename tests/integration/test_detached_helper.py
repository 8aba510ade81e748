"""The host side of `supervisor: detached`, run here as it runs on a host: `python3 -c`
with JSON on standard input, with HOME in a temporary folder (its records and logs go there);
and `Detached` driving it through a link to this machine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from turnout.model import Instance
from turnout.platforms.detached import _HELPER, Detached
from turnout.platforms.ssh_link import HostLink, Output
from turnout.platforms.supervisor import Launch


def helper(home: Path, verb: str, args: dict[str, Any]) -> Any:
    done = subprocess.run([sys.executable, "-c", _HELPER, verb], input=json.dumps(args), text=True,
                          capture_output=True, timeout=30, env={**os.environ, "HOME": str(home)},
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start(home: Path, name: str, command: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = helper(home, "start", {
        "name": name, "cwd": str(home), "env": {"PATH": os.environ["PATH"], "GREETING": "$HOME %n"},
        "command": command, "instance": {"service": "shop", "slot": 0}})
    return found


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_start_list_tail_and_stop_a_detached_process(tmp_path: Path) -> None:
    script = "import os, time; print(os.environ['GREETING'], flush=True); time.sleep(60)"
    first = start(tmp_path, "shop-v1-0", [sys.executable, "-c", script])
    assert running(first["pid"]) and os.getsid(first["pid"]) == first["pid"]  # a session of its own
    again = start(tmp_path, "shop-v1-0", [sys.executable, "-c", script])
    assert again["pid"] == first["pid"]  # a second start finds the first
    assert [r["pid"] for r in helper(tmp_path, "list", {"prefix": "shop-"})] == [first["pid"]]
    assert helper(tmp_path, "list", {"prefix": "other-"}) == []
    for _ in range(100):
        if helper(tmp_path, "tail", {"name": "shop-v1-0", "lines": 5}):
            break
        time.sleep(0.05)
    assert helper(tmp_path, "tail", {"name": "shop-v1-0", "lines": 5}) == "$HOME %n\n"  # verbatim
    assert helper(tmp_path, "stop", {"name": "shop-v1-0", "grace": 5}) is True
    for _ in range(100):
        if not running(first["pid"]):
            break
        time.sleep(0.05)
    assert not running(first["pid"])
    assert helper(tmp_path, "alive", {"name": "shop-v1-0"}) is False
    assert helper(tmp_path, "stop", {"name": "shop-v1-0", "grace": 5}) is False  # gone is no error


def test_a_record_whose_process_is_another_one_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        records = tmp_path / ".local" / "state" / "turnout" / "instances"
        records.mkdir(parents=True)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        (records / "shop-v1-0.json").write_text(json.dumps(
            {"pid": bystander.pid, "ticks": 1, "boot": boot, "instance": {}}))  # pid reused
        assert helper(tmp_path, "alive", {"name": "shop-v1-0"}) is False
        assert helper(tmp_path, "stop", {"name": "shop-v1-0", "grace": 1}) is False
        assert helper(tmp_path, "list", {"prefix": "shop-"}) == []
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_a_program_that_cannot_start_is_said_so(tmp_path: Path) -> None:
    args = {"name": "x", "cwd": None, "env": {}, "command": ["no-such-program"], "instance": {}}
    done = subprocess.run([sys.executable, "-c", _HELPER, "start"], text=True, capture_output=True,
                          input=json.dumps(args), env={**os.environ, "HOME": str(tmp_path)},
                          timeout=30, check=False)
    assert done.returncode != 0
    assert "cannot start: no-such-program: No such file or directory" in done.stderr


class _HereLink:
    """A host link to this machine: argv run here without a shell, HOME in a temporary folder."""

    name = "here"
    host = "127.0.0.1"

    def __init__(self, home: Path) -> None:
        self.home = home

    async def run(self, argv: list[str], *, stdin: bytes | None = None,
                  limit: float | None = None) -> Output:
        program = sys.executable if argv[0] == "python3" else argv[0]
        done = await asyncio.to_thread(subprocess.run, [program, *argv[1:]], input=stdin,
                                       capture_output=True, timeout=limit or 30, check=False,
                                       env={**os.environ, "HOME": str(self.home)})
        return Output(status=done.returncode, stdout=done.stdout.decode(), stderr=done.stderr.decode())


async def test_detached_gives_back_the_instance_it_started_and_finds_it_again(tmp_path: Path) -> None:
    link = cast(HostLink, _HereLink(tmp_path))
    wanted = Instance(service="shop", revision="v2 ü-abcdef12", version="v2 ü", slot=1,
                      host="127.0.0.1", port=41000)
    launch = Launch(cwd=str(tmp_path), env={}, command=[sys.executable, "-c", "import time; time.sleep(60)"],
                    grace=5)
    started = await Detached().launch(link, wanted, launch)
    try:
        assert started is not None and started.pid is not None and started.started is not None
        assert started == replace(wanted, pid=started.pid, started=started.started)
        assert await Detached().listed(link, "shop") == [started]
        assert await Detached().listed(link, "sho") == []
    finally:
        await Detached().stop(link, wanted, grace=5)
    assert await Detached().listed(link, "shop") == []
