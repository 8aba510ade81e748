"""The bytes both test apps stream for `/download`, and the events they send on `/events`.

The download is a deterministic pseudo-random stream (from `seed`), so a client checks it
against its own copy without the app having to announce a checksum; the apps import this
module by its bare name (their folder is on gunicorn's and uvicorn's path), the tests as
`tests.e2e.apps.payload`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

CHUNK = 64 * 1024
MAX_SIZE = 64 * 1024 * 1024
MAX_EVENTS = 50


def download(size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes (at most MAX_SIZE) in chunks of CHUNK, the same for the same seed."""
    rng = random.Random(seed)
    left = min(max(size, 0), MAX_SIZE)
    while left > 0:
        n = min(CHUNK, left)
        left -= n
        yield rng.randbytes(n)


def event(index: int, version: str) -> bytes:
    """One server-sent event stamped with the wall-clock time it is sent at."""
    data = json.dumps({"i": index, "sent": time.time(), "version": version})
    return f"id: {index}\nevent: tick\ndata: {data}\n\n".encode()


def bounded(value: str | None, default: int, top: int) -> int:
    """A query parameter as an int in [0, top]; `default` when absent or malformed."""
    try:
        return min(max(int(value or default), 0), top)
    except ValueError:
        return default
