"""What steers a deployment from outside while it runs: abort and promote requests.

`turnout abort` and `turnout promote` reach a running deployment through the store (they
may run in another process); Ctrl-C and SIGTERM through `request_abort` in this one. A
deployment lock that slipped away (`halted`) stops it where it stands, undoing nothing. Every
wait of the engine goes through `Control`, so that it gives way to them within `POLL`
seconds: `wait` sleeps on the injected clock, `guard` runs a piece of work in a task group
beside a watcher that ends it when an abort is asked for, and `together` runs several
pieces at once, the first failure cancelling the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from turnout.clock import Clock
from turnout.store.db import Store

T = TypeVar("T")
POLL = 0.2  # how often waits look for abort and promote requests


class StepFailed(Exception):
    """A step could not complete; the deployment rolls back."""


class Aborted(Exception):
    """`turnout abort`, Ctrl-C or SIGTERM asked the deployment to go back."""


class Halted(Exception):
    """This control plane lost the deployment lock: stop here, change nothing more."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a task group ended on, without the cancellations it caused."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def together(work: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run every coroutine at once; the first to fail cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for item in work:
                group.create_task(item)
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None


class Control:
    """The abort and promote requests of one deployment (`deployment_id` None: no deployment,
    as when a restore runs on its own), and waits that give way to them."""

    def __init__(
        self, store: Store, clock: Clock, deployment_id: int | None, interrupted: asyncio.Event,
        halted: Callable[[], str | None],
    ) -> None:
        self.store, self.clock = store, clock
        self.deployment_id = deployment_id
        self.interrupted = interrupted
        self.halted = halted
        self.failure: str | None = None  # set by work beside the steps (a background analysis)

    def fail(self, reason: str) -> None:
        """Fail the deployment at its next check, as a failed step would."""
        self.failure = self.failure or reason

    def check(self) -> None:
        """Raise Halted if the lock slipped away, StepFailed if work beside the steps failed,
        Aborted if the deployment was asked to go back."""
        if (reason := self.halted()) is not None:
            raise Halted(reason)
        if self.failure is not None:
            raise StepFailed(self.failure)
        if self.interrupted.is_set():
            raise Aborted("interrupted")
        if self.deployment_id is None:
            return
        record = self.store.deployment(self.deployment_id)
        if record is not None and record.abort_requested:
            raise Aborted("aborted by request")

    def promoted(self) -> bool:
        """True (once) if `turnout promote` was asked for since the last time."""
        if self.deployment_id is None:
            return False
        record = self.store.deployment(self.deployment_id)
        if record is not None and record.promote_requested:
            self.store.clear_request(self.deployment_id, "promote")
            return True
        return False

    async def wait(self, seconds: float | None, *, promote_ends: bool) -> bool:
        """Sleep up to `seconds` (None: for ever) watching for abort; True if promoted."""
        end = None if seconds is None else self.clock.now() + seconds
        while end is None or self.clock.now() < end:
            self.check()
            if promote_ends and self.promoted():
                return True
            step = POLL if end is None else min(POLL, end - self.clock.now())
            await self.clock.sleep(max(0.0, step))
        return False

    async def guard(self, work: Awaitable[T]) -> T:
        """The result of `work`, unless an abort is asked for first (then Aborted)."""
        async def watch() -> None:
            while True:
                self.check()
                await asyncio.sleep(POLL)

        async def run() -> T:
            try:
                return await work
            finally:
                watcher.cancel()

        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(watch())
                result = group.create_task(run())
        except BaseExceptionGroup as failed:
            raise first_error(failed) from None
        return result.result()
