"""The e2e helper that runs the real CLI leaves nothing behind when it is cancelled: no process
and no open pipe, which would otherwise be collected during some later test (in whichever
xdist worker) and fail it with a ResourceWarning."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import CliFolder


def cli_children() -> list[int]:
    """This process's children that run `turnout status`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"turnout" in argv and b"status" in argv:
            found.append(int(entry.name))
    return found


async def test_a_cancelled_command_is_ended_and_its_pipes_closed(tmp_path: Path) -> None:
    task = asyncio.create_task(CliFolder(tmp_path).arun("status"))
    for _ in range(100):  # 5 s at most for the child to appear
        if cli_children():
            break
        await asyncio.sleep(0.05)
    assert cli_children() and not task.done(), "the command never ran (or ended before the cancel)"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cli_children() == []
    gc.collect()  # an unclosed pipe or process warns here, and warnings are errors
