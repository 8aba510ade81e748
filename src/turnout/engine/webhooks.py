"""Webhooks: the HTTP calls a deployment makes at its turning points (`strategy.webhooks`).

Every call is a POST of a JSON description of the deployment (`about`: its id, service,
version, target and previous revision, strategy, phase, the step in progress, its number and
description), bounded as a whole by the hook's timeout. Three kinds are gates, and anything
but a 2xx (another status, no answer in time, a refused connection) refuses them:
`pre-rollout` before the first step (refused, the deployment fails before anything started),
`confirm-rollout` before each change of traffic (a Route step) and `confirm-promotion` before
the Promote step (refused, the deployment rolls back like after a failed gate). A hook with
`retries` is called again a second later after a refusal; every attempt is recorded as a
`webhook` event with its status and time, so a retry never hides a failure. Gate calls run
under `Control.guard`, so `turnout abort` or Ctrl-C ends one within `POLL` seconds.
`rollback` hooks are told after a rollback ended; their answer is only recorded.

`event` hooks get every event that matters (`SENT`) as the recorder stores it, through one
queue and one sending task per hook: in order, and never holding the deployment up. Their
failures are recorded once per deployment, as an `info` event. When the deployment ends
the senders get at most their timeout to send what is still queued.

The client is the executor's (the session's `httpx.AsyncClient`, which reads no proxy
settings from the environment); tests give it a mock transport.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from turnout import __version__
from turnout.clock import Clock
from turnout.engine.control import Aborted, Control, StepFailed
from turnout.engine.events import Event, Recorder
from turnout.plan import Step, describe
from turnout.spec.webhooks import Webhook, When
from turnout.store.db import DeploymentRecord, Store
from turnout.store.queries import plain_json

SENT = frozenset({"phase", "step", "gate", "paused", "succeeded", "failed", "rollback"})
RETRY_PAUSE = 1.0  # seconds between two attempts of a hook with retries
MAX_QUEUED = 1000  # events waiting for one event hook; beyond, they are dropped (and said so)
SNIPPET = 200  # characters of a refusing answer's body kept in its event
USER_AGENT = f"turnout/{__version__}"


@dataclass(frozen=True)
class Attempt:
    """One call's outcome: the status, or why there was none; how long it took."""

    status: int | None
    seconds: float
    error: str = ""  # no status: why; a status other than 2xx: the start of the body

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        what = self.error if self.status is None else f"HTTP {self.status}"
        if self.status is not None and self.error:
            what += f" ({self.error})"
        return f"{what} after {self.seconds:.2f}s"


def shown(url: str) -> str:
    """`url` without any user or password in it, as events show it."""
    return re.sub(r"^([a-zA-Z]+://)[^/@]*@", r"\1", url)


async def call(http: httpx.AsyncClient, hook: Webhook, body: dict[str, Any]) -> Attempt:
    """POST `body` as JSON to `hook`; the whole exchange is bounded by the hook's timeout."""
    started = time.perf_counter()
    content = json.dumps(plain_json(body), allow_nan=False).encode()  # as the store keeps events
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, **hook.headers}
    try:
        async with asyncio.timeout(hook.seconds):
            async with http.stream("POST", hook.url, content=content, headers=headers,
                                   timeout=hook.seconds, follow_redirects=False) as answer:
                start = "" if answer.is_success else await _start_of(answer)
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(None, time.perf_counter() - started, f"no answer within {hook.seconds:g}s")
    except httpx.ConnectError as exc:
        return Attempt(None, time.perf_counter() - started, f"cannot connect: {exc or 'refused'}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Attempt(None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return Attempt(answer.status_code, time.perf_counter() - started, start)


async def _start_of(answer: httpx.Response) -> str:
    """The first `SNIPPET` characters of a body, on one line."""
    data = b""
    async for chunk in answer.aiter_bytes():
        data += chunk
        if len(data) >= SNIPPET:
            break
    return " ".join(data[:SNIPPET].decode(errors="replace").split())


class Webhooks:
    """The webhooks of one spec, for the deployment `begin` was given."""

    def __init__(
        self, *, hooks: Sequence[Webhook], http: httpx.AsyncClient, clock: Clock, store: Store,
        record: Recorder,
    ) -> None:
        self.hooks = list(hooks)
        self.http, self.clock, self.store, self.record = http, clock, store, record
        self.about: dict[str, Any] = {}
        self._senders: list[_Sender] = []
        self._noted = False  # an event hook's failure was recorded for this deployment

    def of(self, when: When) -> list[Webhook]:
        return [hook for hook in self.hooks if hook.when == when]

    def begin(self, deployment: DeploymentRecord, plan: Sequence[Step]) -> None:
        """Describe `deployment` in the calls to come, and start sending its events."""
        following = plan[deployment.step] if deployment.step < len(plan) else None
        self.about = {
            "deployment": deployment.id, "service": deployment.service, "version": deployment.version,
            "target_revision": deployment.target_revision,
            "previous_revision": deployment.previous_revision, "strategy": deployment.strategy,
            "phase": deployment.phase, "step": deployment.step + 1, "total": len(plan),
            "step_description": describe(following) if following is not None else "",
        }
        self._noted = False
        self._senders = [_Sender(hook, self) for hook in self.of("event")]
        if self.hooks and self._observe not in self.record.taps:
            self.record.taps.append(self._observe)

    async def end(self) -> None:
        """Give the event senders at most their timeout to send what is queued, then stop."""
        if self._observe in self.record.taps:
            self.record.taps.remove(self._observe)
        senders, self._senders = self._senders, []
        if not senders:
            return
        for sender in senders:
            sender.queue.put_nowait(None)
        tasks = [sender.task for sender in senders]
        try:
            _, late = await asyncio.wait(tasks, timeout=max(s.hook.seconds for s in senders))
        finally:
            for task in tasks:
                task.cancel()
        for sender in senders:
            if sender.task in late:
                self.failed(sender.hook, f"{sender.queue.qsize() + 1} event(s) still unsent when "
                                         "the deployment ended")
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- gates ----------------------------------------------------------------------

    async def pre_rollout(self, control: Control, deployment: DeploymentRecord) -> str | None:
        """Ask the pre-rollout hooks once per deployment: why it may not start, or None."""
        if deployment.step > 0 or not self.of("pre-rollout"):
            return None
        passed = [e for e in self.store.events(deployment.id, kind="webhook")
                  if e.data.get("when") == "pre-rollout" and e.data.get("ok")]
        return None if passed else await self._ask(control, "pre-rollout")

    async def confirm(self, control: Control, when: When) -> None:
        """Ask the `when` hooks (confirm-rollout, confirm-promotion); StepFailed if refused."""
        refused = await self._ask(control, when)
        if refused is not None:
            raise StepFailed(refused)

    async def _ask(self, control: Control, when: When) -> str | None:
        for hook in self.of(when):
            tries = await self._call(hook, {**self.about, "when": when}, control)
            if not tries[-1].ok:
                again = f" ({len(tries)} attempts)" if len(tries) > 1 else ""
                return f"{when} webhook {shown(hook.url)} refused: {tries[-1]}{again}"
        return None

    async def rolled_back(self, done: DeploymentRecord) -> None:
        """Tell the rollback hooks how the rollback of `done` ended; record their answers."""
        self.about["phase"] = done.phase
        for hook in self.of("rollback"):
            await self._call(hook, {**self.about, "when": "rollback", "message": done.message}, None)

    async def _call(self, hook: Webhook, body: dict[str, Any], control: Control | None) -> list[Attempt]:
        """Call `hook` until it answers 2xx or its retries run out, recording every attempt;
        with `control`, each wait gives way to an abort."""
        tries: list[Attempt] = []
        while len(tries) <= hook.retries and not (tries and tries[-1].ok):
            if tries and control is not None:
                await control.wait(RETRY_PAUSE, promote_ends=False)
            elif tries:
                await self.clock.sleep(RETRY_PAUSE)
            try:
                work = call(self.http, hook, body)
                tries.append(await (control.guard(work) if control is not None else work))
            except Aborted as exc:
                self.record(Event("webhook", f"{body['when']} webhook {shown(hook.url)}: abandoned, {exc}",
                                  data={"when": body["when"], "url": shown(hook.url), "ok": False}))
                raise
            self._attempted(hook, body["when"], tries[-1], len(tries))
        return tries

    def _attempted(self, hook: Webhook, when: str, attempt: Attempt, number: int) -> None:
        of = f", attempt {number} of {hook.retries + 1}" if hook.retries else ""
        self.record(Event(
            "webhook",
            f"{when} webhook {shown(hook.url)}: {attempt}{of}",
            data={"when": when, "url": shown(hook.url), "status": attempt.status, "ok": attempt.ok,
                  "seconds": round(attempt.seconds, 4), "error": attempt.error, "attempt": number},
        ))

    # -- events -----------------------------------------------------------------------

    def _observe(self, event: Event) -> None:
        if event.kind == "step" and event.step is not None:
            self.about.update(step=event.step, total=event.total, step_description=event.message)
        elif event.kind == "phase":
            self.about["phase"] = event.data.get("phase", self.about.get("phase"))
        if event.kind in SENT and self._senders:
            body = {**self.about, "when": "event", "event": {
                "kind": event.kind, "message": event.message, "step": event.step,
                "total": event.total, "data": event.data}}
            for sender in self._senders:
                sender.put(body)

    def failed(self, hook: Webhook, why: str) -> None:
        """An event hook failed: say so, once per deployment."""
        if not self._noted:
            self._noted = True
            self.record(Event("info", f"event webhook {shown(hook.url)}: {why}; the deployment goes "
                                      "on (further failures of event webhooks are not recorded)",
                              data={"when": "event", "url": shown(hook.url), "ok": False}))


class _Sender:
    """One event hook's queue, and the task that sends it in order."""

    def __init__(self, hook: Webhook, webhooks: Webhooks) -> None:
        self.hook, self.webhooks = hook, webhooks
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._send())

    def put(self, body: dict[str, Any]) -> None:
        if self.queue.qsize() >= MAX_QUEUED:
            self.webhooks.failed(self.hook, f"more than {MAX_QUEUED} events waiting; dropped one")
            return
        self.queue.put_nowait(body)

    async def _send(self) -> None:
        while (body := await self.queue.get()) is not None:
            attempt = await call(self.webhooks.http, self.hook, body)
            if not attempt.ok:
                self.webhooks.failed(self.hook, str(attempt))
