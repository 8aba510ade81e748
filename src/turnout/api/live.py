"""The store seen from the event loop: one database thread, the current snapshot, and streams.

Every store call runs on one dedicated thread (`Gateway`), so a slow or locked database
never stalls the event loop and calls never race each other. `Live` keeps the snapshot
of the current revision: one background task polls `revision()` every 50 ms (changes
may come from any process, e.g. the `turnout flags` CLI), rebuilds the snapshot when it
moves, and fans the new state out to every open event stream; streams also get a
`: ping` comment every 15 s so that proxies and clients see the connection alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from turnout.api.http import StreamSink
from turnout.api.snapshot import Snapshot
from turnout.errors import TurnoutError

P = ParamSpec("P")
R = TypeVar("R")
POLL_S = 0.05
PING_S = 15.0
PING = b": ping\n\n"

log = logging.getLogger("turnout.server")


class TokenLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> Literal["client", "admin"]: ...


class FlagBackend(Protocol):
    """What the server needs of `turnout.flags.store.FlagStore` on its hot and stream paths."""

    def revision(self) -> int: ...
    def state(self) -> dict[str, Any]: ...
    def check_token(self, secret: str) -> TokenLike | None: ...
    def close(self) -> None: ...


class Gateway:
    """Runs store calls one at a time on a dedicated thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-store")

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class Live:
    """The current snapshot and the streams that follow it."""

    def __init__(self, backend: FlagBackend, gateway: Gateway, *, on_change: Callable[[], None],
                 poll_s: float = POLL_S, ping_s: float = PING_S) -> None:
        self._backend = backend
        self._gateway = gateway
        self._on_change = on_change
        self._poll_s = poll_s
        self._ping_s = ping_s
        self._streams: set[StreamSink] = set()
        self.snapshot: Snapshot | None = None

    async def load(self) -> Snapshot:
        """Read the whole state now (at start, and whenever the revision moved)."""
        state = await self._gateway.run(self._backend.state)
        snapshot = Snapshot.build(state)
        if self.snapshot is not None and snapshot.revision < self.snapshot.revision:
            return self.snapshot  # an older read that finished late
        changed = self.snapshot is None or snapshot.revision != self.snapshot.revision
        self.snapshot = snapshot
        if changed:
            self._on_change()
            self._broadcast(snapshot.event)
        return snapshot

    async def follow(self) -> None:
        """Poll for changes and ping streams, until cancelled."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._ping_s
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                revision = await self._gateway.run(self._backend.revision)
                if self.snapshot is None or revision != self.snapshot.revision:
                    await self.load()
            except TurnoutError as exc:
                log.warning("cannot read the flag store: %s", exc)
            if loop.time() >= next_ping:
                next_ping = loop.time() + self._ping_s
                self._broadcast(PING)

    def subscribe(self, sink: StreamSink) -> None:
        """Send the current state to a new stream and keep it for later changes."""
        if self.snapshot is not None:
            sink.send(self.snapshot.event)
        self._streams.add(sink)

    def _broadcast(self, data: bytes) -> None:
        for sink in list(self._streams):
            if sink.closed:
                self._streams.discard(sink)
            else:
                sink.send(data)

    @property
    def streams(self) -> int:
        return sum(1 for sink in self._streams if not sink.closed)

    def close_streams(self) -> None:
        for sink in list(self._streams):
            with contextlib.suppress(Exception):
                sink.close()
        self._streams.clear()
