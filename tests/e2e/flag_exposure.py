"""Which answers took a flag's new code path when the flag's history says they could not have.

The flag store's audit trail records every state of a flag with the wall-clock time it was
written, and the router only ever gets a state after the store has it. So a request sent
at `sent` and answered at `done` can only have been served by a state written before
`done` that was still the newest one at `sent`: a state in effect at some moment between
the two. `lag` widens that window backwards for checks that must allow the router to
trail the store (a state switched off a moment ago may still serve the next request).

Load samples carry monotonic times; `Load.wall` maps them onto the audit trail's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.demo.load import Sample
from turnout.flags import FlagState, evaluate
from turnout.flags.store import AuditRecord


@dataclass(frozen=True)
class Change:
    at: float  # wall-clock time the store wrote this state
    state: FlagState | None  # None: the flag did not exist, or was archived


class FlagHistory:
    """The states of one flag, oldest first, each evaluated per user with turnout's engine."""

    def __init__(self, flag: str, changes: Sequence[Change]) -> None:
        self.flag = flag
        self.changes = [Change(float("-inf"), None), *sorted(changes, key=lambda c: c.at)]
        self._on: dict[tuple[int, str], bool] = {}

    @classmethod
    def from_definitions(
        cls, flag: str, changes: Iterable[tuple[float, dict[str, Any] | None]]
    ) -> FlagHistory:
        """From (time written, flag definition or None) pairs."""
        return cls(flag, [Change(at, None if d is None else _compile(d)) for at, d in changes])

    @classmethod
    def from_audit(cls, flag: str, records: Iterable[AuditRecord]) -> FlagHistory:
        """From the store's audit records of `flag` (`FlagStore.history`)."""
        return cls.from_definitions(flag, [
            (r.at, None if r.action == "archive" else r.change.get("after")) for r in records
        ])

    def on_for(self, index: int, user: str) -> bool:
        """Whether the state `changes[index]` has the flag on for `user`."""
        key = (index, user)
        if key not in self._on:
            state = self.changes[index].state
            self._on[key] = state is not None and evaluate(state, self.flag, {"userId": user}).enabled
        return self._on[key]

    def could_serve(self, sent: float, done: float, *, lag: float = 0.0) -> list[int]:
        """Indices of the states in effect at some moment of [sent - lag, done]."""
        last = len(self.changes) - 1
        return [i for i, change in enumerate(self.changes)
                if change.at <= done and (i == last or self.changes[i + 1].at > sent - lag)]

    def first_on_for_all(self, users: Iterable[str], *, after: float) -> float | None:
        """When a state written after `after` first had the flag on for every one of `users`."""
        users = list(users)
        for i, change in enumerate(self.changes):
            if change.at > after and all(self.on_for(i, u) for u in users):
                return change.at
        return None


def unexplained(
    samples: Iterable[Sample],
    history: FlagHistory,
    *,
    wall: Callable[[float], float],
    lag: float = 0.0,
) -> list[Sample]:
    """The samples whose user had the flag off in every state that could have served them.

    Pass only samples that took the flag's code path; `wall` maps their monotonic times
    to the audit trail's clock.
    """
    return [
        s for s in samples
        if not any(history.on_for(i, s.user)
                   for i in history.could_serve(wall(s.sent), wall(s.done), lag=lag))
    ]


def _compile(definition: dict[str, Any]) -> FlagState:
    return FlagState.from_json({"version": 2, "features": [definition], "segments": []})
