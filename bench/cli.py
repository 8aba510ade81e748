"""The `turnout` CLI as the benchmarks call it: one `--json` command, its answer parsed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any


async def cli_json(spec: Path, *args: str, name: str = "out.json") -> Any:
    """`turnout ARGS` (a `--json` command) beside `spec`, its output read as JSON; RuntimeError
    when it fails or its output is not JSON. The output goes to a file `name` there: through a
    pipe, output over 64 KiB once came back cut (fixed in the CLI since; see BENCHMARKS.md)."""
    out = spec.parent / name
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "turnout", *args, cwd=spec.parent, stdin=asyncio.subprocess.DEVNULL,
            stdout=sink, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(60.0):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.read_text()
    out.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"turnout {' '.join(args)} failed: {err.decode(errors='replace')}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RuntimeError(f"turnout {' '.join(args)}: {len(text)} characters, not JSON ({exc})") from None
