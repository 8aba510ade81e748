"""The in-process side of every flag source: the held state, its status and its listeners.

``FlagHolder`` keeps the current compiled ``FlagState`` (replaced whole, never mutated, so
``evaluate`` and ``variant`` read it without a lock), the status (NOT_READY, READY, STALE,
ERROR, CLOSED) and the listeners told about READY, CHANGED (with the flag names), STALE and
ERROR. ``LocalFlags`` is that surface over a document the caller supplies (tests, offline
use); ``turnout.flags.client.FlagClient`` feeds the same holder from a server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from turnout.flags.evaluate import evaluate, variant
from turnout.flags.model import Context, Result, VariantResult
from turnout.flags.state import FlagState

log = logging.getLogger("turnout.flags.client")  # the name listeners' failures were always logged under


class ClientStatus(StrEnum):
    NOT_READY = "NOT_READY"
    """No state yet."""
    READY = "READY"
    """The state is the server's latest as far as the client knows."""
    STALE = "STALE"
    """A state is held, but the server cannot be reached (or it came from the cache)."""
    ERROR = "ERROR"
    """No state, and the server cannot be reached or refused the token."""
    CLOSED = "CLOSED"


class ClientEvent(StrEnum):
    READY = "ready"
    CHANGED = "changed"
    STALE = "stale"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Notice:
    """What a listener is told: the event, the flags that changed, a message, the revision."""

    event: ClientEvent
    flags_changed: tuple[str, ...] = ()
    message: str | None = None
    revision: int | None = None


Listener = Callable[[Notice], None]


def changed_flags(old: FlagState, new: FlagState) -> tuple[str, ...]:
    """Names of flags added, removed or redefined, or whose segments changed."""
    names = {n for n in old.raw_features.keys() | new.raw_features.keys()
             if old.raw_features.get(n) != new.raw_features.get(n)}
    segments = {i for i in old.raw_segments.keys() | new.raw_segments.keys()
                if old.raw_segments.get(i) != new.raw_segments.get(i)}
    if segments:
        names.update(n for n, f in new.features.items() if f.segment_ids & segments)
    return tuple(sorted(names))


def revision_of(doc: Mapping[str, Any]) -> int | None:
    meta = doc.get("meta")
    rev = meta.get("revision") if isinstance(meta, Mapping) else None
    return rev if isinstance(rev, int) and not isinstance(rev, bool) else None


class FlagHolder:
    """The current state, its status and the listeners; shared by both sources."""

    def __init__(self) -> None:
        self._state = FlagState()
        self._doc: dict[str, Any] | None = None
        self._revision: int | None = None
        self._status = ClientStatus.NOT_READY
        self._lock = threading.Lock()
        self._has_state = threading.Event()
        self._listeners: list[Listener] = []

    @property
    def state(self) -> FlagState:
        return self._state

    @property
    def status(self) -> ClientStatus:
        return self._status

    @property
    def revision(self) -> int | None:
        return self._revision

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def wait_for_state(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until a state (from server or cache) is held."""
        return self._has_state.wait(timeout)

    def evaluate(self, name: str, context: Context | None = None, *,
                 now: datetime | None = None) -> Result:
        """Whether flag ``name`` is on for ``context``; local, never raises."""
        return evaluate(self._state, name, context, now=now)

    def variant(self, name: str, context: Context | None = None, *,
                now: datetime | None = None) -> VariantResult:
        """The variant of flag ``name`` for ``context``; local, never raises."""
        return variant(self._state, name, context, now=now)

    def is_enabled(self, name: str, context: Context | None = None) -> bool:
        return evaluate(self._state, name, context).enabled

    def _notify(self, notices: list[Notice]) -> None:
        for notice in notices:
            for listener in list(self._listeners):
                try:
                    listener(notice)
                except Exception:
                    log.exception("flag listener failed on %s", notice.event)

    def _install(self, doc: dict[str, Any], *, fresh: bool = True) -> None:
        """Replace the state with ``doc``; ``fresh`` is False for a cached document."""
        new = FlagState.from_json(doc)
        rev = revision_of(doc)
        with self._lock:
            old, had = self._state, self._has_state.is_set()
            was = self._status
            self._state, self._doc, self._revision = new, doc, rev
            self._status = ClientStatus.READY if fresh else ClientStatus.STALE
            self._has_state.set()
        notices = []
        if fresh and was is not ClientStatus.READY:
            notices.append(Notice(ClientEvent.READY, revision=rev))
        if not fresh:
            notices.append(Notice(ClientEvent.STALE, message="serving cached flags", revision=rev))
        changed = changed_flags(old, new) if had else ()
        if changed:
            notices.append(Notice(ClientEvent.CHANGED, changed, revision=rev))
        self._notify(notices)

    def _confirm(self) -> None:
        """The server answered and the held state is current."""
        with self._lock:
            was = self._status
            if was is ClientStatus.STALE and self._doc is not None:
                self._status = ClientStatus.READY
        if was is ClientStatus.STALE and self._doc is not None:
            self._notify([Notice(ClientEvent.READY, revision=self._revision)])

    def _failed(self, message: str) -> None:
        """The server could not be reached: STALE with a state, ERROR without."""
        with self._lock:
            was = self._status
            if was is ClientStatus.CLOSED:
                return
            now = ClientStatus.STALE if self._has_state.is_set() else ClientStatus.ERROR
            self._status = now
        if now is not was:
            event = ClientEvent.STALE if now is ClientStatus.STALE else ClientEvent.ERROR
            self._notify([Notice(event, message=message, revision=self._revision)])


class LocalFlags(FlagHolder):
    """Flags from a document the caller supplies; no network."""

    def __init__(self, doc: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if doc is not None:
            self.set(doc)

    def set(self, doc: Mapping[str, Any]) -> None:
        """Install ``doc`` (a client API state document); listeners hear READY/CHANGED."""
        self._install(dict(doc))

    def mark_stale(self, message: str = "stale") -> None:
        self._failed(message)

    def start(self) -> None:
        """Nothing to start; present so both sources can be used alike."""

    def close(self) -> None:
        self._status = ClientStatus.CLOSED
