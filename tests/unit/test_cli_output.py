"""What a command prints after its event loop reaches a reader that lags, whole.

uvloop's loop, once ended, left the standard streams' writers keeping only what a pipe took
at once: `turnout history --json` of a long deployment piped into a slow reader was cut at
64 KiB with exit 0. `run_async` gives the streams new writers when its loop ends.
"""

from __future__ import annotations

import subprocess
import sys
import time

PRINTS_AFTER_THE_LOOP = """
import asyncio
from turnout.cli.main import run_async

async def nothing() -> None:
    await asyncio.sleep(0)

run_async(nothing)
print("x" * 200_000)
"""


def test_output_after_the_loop_reaches_a_slow_reader_whole() -> None:
    child = subprocess.Popen([sys.executable, "-c", PRINTS_AFTER_THE_LOOP], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    time.sleep(2.5)  # the child starts (under a second) and fills the pipes (64 KiB) meanwhile
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err[-2000:]
    assert len(out) == 200_001
