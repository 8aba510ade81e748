"""turnout's flag client: a local copy of the server's flags, kept current, evaluated in-process.

``FlagClient`` fetches the state document from ``GET /api/client/features`` (with
``If-None-Match``), then holds ``GET /api/client/stream`` open and swaps in a newly
compiled ``FlagState`` on every ``state`` event. When the stream breaks it polls every
``poll_interval`` and retries the stream with exponential backoff; an optional cache
file keeps the last document so an application that starts while the server is down
still has its flags (status STALE). The network runs on one background thread with its
own asyncio loop, because evaluation must stay synchronous and local: ``evaluate`` and
``variant`` only read the current state, which is replaced whole, never mutated.

The state it holds, its status and its listeners are ``turnout.flags.local.FlagHolder``'s;
``LocalFlags`` (there) is the same surface over a document the caller supplies. Both
tell listeners about READY, CHANGED (with the flag names), STALE and ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from turnout.files import write_atomic
from turnout.flags.local import (
    ClientEvent,
    ClientStatus,
    FlagHolder,
    Listener,
    LocalFlags,
    Notice,
    changed_flags,
    revision_of,
)

__all__ = ["ClientEvent", "ClientStatus", "FlagClient", "Listener", "LocalFlags", "Notice",
           "changed_flags"]

log = logging.getLogger(__name__)
_NETWORK_ERRORS = (httpx.HTTPError, httpx.StreamError, OSError, ValueError)


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs from server-sent event lines; comments are skipped."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


class FlagClient(FlagHolder):
    """Keeps a local copy of a turnout server's flags current; evaluation is in-process."""

    def __init__(self, url: str, token: str, *, poll_interval: float = 15.0, stream: bool = True,
                 cache_path: str | os.PathLike[str] | None = None, timeout: float = 5.0,
                 backoff_max: float = 30.0, idle_timeout: float = 45.0) -> None:
        super().__init__()
        self._url = url.rstrip("/")
        self._headers = {"Authorization": token, "User-Agent": "turnout-flag-client"}
        self._poll_interval = poll_interval
        self._stream = stream
        self._cache = Path(cache_path) if cache_path is not None else None
        self._timeout = httpx.Timeout(timeout, read=idle_timeout)
        self._backoff_max = backoff_max
        self._etag: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def start(self) -> None:
        """Start the background thread (once); returns at once."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._thread_main, name="turnout-flags", daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    def close(self) -> None:
        """Stop the background thread; returns within about a second."""
        with self._lock:
            self._status = ClientStatus.CLOSED
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(1.0)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._main())
            loop.call_soon(self._started.set)
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        except Exception:
            log.exception("flag client stopped")
        finally:
            self._started.set()
            loop.close()

    async def _main(self) -> None:
        async with httpx.AsyncClient(base_url=self._url, headers=self._headers,
                                     timeout=self._timeout) as http:
            problem = await self._try_fetch(http)
            if problem is not None:
                if not self._has_state.is_set():
                    self._load_cache()
                self._failed(problem)
            attempt = 0
            while True:
                if self._stream and await self._hold_stream(http):
                    attempt = 0
                delay = min(0.25 * 2 ** attempt, self._backoff_max) if self._stream else float("inf")
                await self._poll_for(http, delay)
                attempt += 1

    async def _poll_for(self, http: httpx.AsyncClient, duration: float) -> None:
        """Fetch now, then every ``poll_interval`` until ``duration`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        await self._fetch(http)
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(self._poll_interval, left))
            if loop.time() < deadline:
                await self._fetch(http)

    async def _fetch(self, http: httpx.AsyncClient) -> None:
        problem = await self._try_fetch(http)
        if problem is not None:
            self._failed(problem)

    async def _try_fetch(self, http: httpx.AsyncClient) -> str | None:
        """Fetch and install the state; the problem, if that failed."""
        headers = {"If-None-Match": self._etag} if self._etag and self._has_state.is_set() else {}
        try:
            response = await http.get("/api/client/features", headers=headers)
            if response.status_code == 304:
                self._confirm()
                return None
            response.raise_for_status()
            doc = response.json()
            if not isinstance(doc, dict):
                raise ValueError("the state document is not an object")
        except _NETWORK_ERRORS as exc:
            return f"fetching flags failed: {_describe(exc)}"
        self._etag = response.headers.get("ETag")
        self._accept(doc)
        return None

    async def _hold_stream(self, http: httpx.AsyncClient) -> bool:
        """Read the stream until it ends; True if it delivered at least one state."""
        delivered = False
        try:
            async with http.stream("GET", "/api/client/stream",
                                   headers={"Accept": "text/event-stream"}) as response:
                response.raise_for_status()
                async for event, data in _sse_events(response.aiter_lines()):
                    if event != "state":
                        continue
                    doc = json.loads(data)
                    if not isinstance(doc, dict):
                        raise ValueError("a state event is not an object")
                    self._accept(doc)
                    delivered = True
        except _NETWORK_ERRORS as exc:
            log.debug("flag stream ended: %s", _describe(exc))
        return delivered

    def _accept(self, doc: dict[str, Any]) -> None:
        rev = revision_of(doc)
        if rev is not None and rev == self._revision and self._status is ClientStatus.READY:
            return
        if rev is not None:
            self._etag = f'"{rev}"'
        self._install(doc)
        self._write_cache(doc)

    def _write_cache(self, doc: dict[str, Any]) -> None:
        if self._cache is None:
            return
        try:
            write_atomic(self._cache, json.dumps(doc, separators=(",", ":")).encode(), durable=False)
        except OSError as exc:
            log.warning("could not write the flag cache %s: %s", self._cache, exc)

    def _load_cache(self) -> None:
        if self._cache is None:
            return
        try:
            doc = json.loads(self._cache.read_text())
        except (OSError, ValueError) as exc:
            log.warning("could not read the flag cache %s: %s", self._cache, exc)
            return
        if isinstance(doc, dict):
            self._install(doc, fresh=False)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
