"""Gates: the pauses and analyses of a plan, judged on live traffic while they wait.

A pause or analysis step names the subject it watches (the canary revision, a flag's `on`
cohort) and its baseline (the stable revision, the flag's `off` cohort). At the start the
gate takes a reading of both from the `MetricSource`; at every `gate.interval` it takes
another and asks the `Judge` about the two windows since the start. Every decision is
recorded with its evidence. Failed rolls back at once; a step only continues on its own
after Successful: a pause or analysis that ends Inconclusive (or Error) holds the
deployment, phase `paused`, still watched, until `turnout promote` or `turnout abort`.
Blue-green's analysis before the switch starts from the reading taken when the preview
opened (`preview_opened`), so the tests' traffic is judged too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from turnout.analysis.judge import Criteria, Decision, Judge, Verdict, Window
from turnout.analysis.sources import MetricSource, Reading
from turnout.clock import Clock
from turnout.engine.control import Control, StepFailed
from turnout.engine.events import Event, Recorder
from turnout.errors import AnalysisError, TurnoutError
from turnout.plan import Analyse, CohortSubject, Pause, Subject, describe_subject
from turnout.spec import Background, Gate, Spec


@dataclass
class Silence:
    """Looks in a row in which the watched subject got no new request; `limit` of them fail
    the gate (None: never, silence is only inconclusive)."""

    limit: int | None
    requests: int = 0
    looks: int = 0

    def heard(self, requests: int) -> bool:
        """Count one look at `requests` so far; False once `limit` looks in a row saw none."""
        if self.limit is None:
            return True
        self.looks = 0 if requests > self.requests else self.looks + 1
        self.requests = requests
        return self.looks < self.limit


@dataclass
class Watching:
    """A background analysis: its settings, subjects, first reading and last decision."""

    settings: Background
    watch: Subject
    baseline: Subject | None
    start: Reading
    last: Decision | None = None


class Gates:
    def __init__(
        self, *, spec: Spec, source: MetricSource, judge: Judge, clock: Clock, record: Recorder
    ) -> None:
        self.spec, self.source, self.judge = spec, source, judge
        self.clock, self.record = clock, record
        self._opened: dict[Subject, Reading] = {}  # by preview subject: when its preview opened

    @property
    def gate(self) -> Gate:
        """The strategy's gate (its defaults for a strategy that has none)."""
        gate = getattr(self.spec.strategy, "gate", None)
        return gate if isinstance(gate, Gate) else Gate()

    async def pause(self, control: Control, deployment_id: int, step: Pause) -> None:
        if step.seconds is None:
            self.record.phase(deployment_id, "paused", "waiting for promote")
            self.record(Event("paused", "paused: `turnout promote` continues, `turnout abort` goes back"))
        criteria = Criteria.of(self.gate)
        end = None if step.seconds is None else self.clock.now() + step.seconds
        start = await self._reading(step.watch, step.baseline) if step.watch is not None else None
        silence = Silence(self.gate.max_silent_intervals)
        decision, promoted = await self._watch(control, end, step, start, criteria, silence=silence)
        if not promoted and decision is not None and not decision.passed:
            kind = decision.verdict.value
            self.record.phase(deployment_id, "paused", f"{kind.lower()}: {decision.reason}")
            self.record(Event("paused", f"gate {kind} at the end of the pause ({decision.reason}): "
                                        "`turnout promote` continues, `turnout abort` goes back"))
            await self._watch(control, None, step, start, criteria, silence=silence)
        self.record.phase(deployment_id, "progressing")

    async def _watch(
        self, control: Control, end: float | None, step: Pause, start: Reading | None, criteria: Criteria,
        *, silence: Silence,
    ) -> tuple[Decision | None, bool]:
        """Wait until `end` (None: until promoted), judging at every gate interval; StepFailed
        on Failed. Returns (the last decision, whether promoted)."""
        interval = self.gate.interval
        judging = step.watch is not None and start is not None
        decision: Decision | None = None
        while end is None or self.clock.now() < end:
            slice_ = interval if end is None else min(interval, end - self.clock.now())
            if await control.wait(slice_, promote_ends=True):
                self.record(Event("info", "promoted"))
                return decision, True
            if judging:
                decision = await self._decide(step.watch, step.baseline, start, criteria, silence)
        if decision is None and judging:  # a pause too short for one interval is still judged once
            decision = await self._decide(step.watch, step.baseline, start, criteria, silence)
        return decision, False

    async def preview_opened(self, subject: Subject, baseline: Subject | None) -> None:
        """The preview now serves `subject`: the reading its analysis `since_preview` starts
        from. A source that cannot be read now leaves none (that analysis starts at its step)."""
        with contextlib.suppress(AnalysisError):
            self._opened[subject] = await self._reading(subject, baseline)

    async def analyse(self, control: Control, deployment_id: int, step: Analyse) -> None:
        criteria = Criteria.of(step)
        start = await self._start(step)
        end = self.clock.now() + step.seconds
        silence = Silence(self.gate.max_silent_intervals)
        decision: Decision | None = None
        while self.clock.now() < end:
            await control.wait(min(self.gate.interval, end - self.clock.now()), promote_ends=False)
            decision = await self._decide(step.subject, step.baseline, start, criteria, silence, quiet=True)
            if decision.failed:
                break
        if decision is None:
            decision = await self._decide(step.subject, step.baseline, start, criteria, silence, quiet=True)
        self._report(step.subject, step.baseline, decision)
        if decision.failed:
            raise StepFailed(f"analysis failed: {decision.reason}")
        if not decision.passed:
            message = f"{decision.verdict.value.lower()}: {decision.reason}"
            self.record.phase(deployment_id, "paused", message)
            self.record(Event("paused", f"analysis {decision.verdict.value} ({decision.reason}): "
                                        "promote or abort"))
            await control.wait(None, promote_ends=True)
            self.record.phase(deployment_id, "progressing")

    @contextlib.asynccontextmanager
    async def throughout(self, control: Control, settings: Background | None, watch: Subject,
                         baseline: Subject | None) -> AsyncIterator[Watching | None]:
        """The strategy's `analysis`, judged at its interval while the body runs (which gets
        it, for `settle`). A Failed decision is recorded and fails the deployment at its next
        check (`Control.fail`); the last decision is recorded when the body ends."""
        if settings is None:
            yield None
            return
        watching = Watching(settings, watch, baseline, await self._reading(watch, baseline))
        task = asyncio.create_task(self._throughout(control, watching))
        try:
            yield watching
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if watching.last is not None and not watching.last.failed:
            self._report(watch, baseline, watching.last)

    async def settle(self, control: Control, deployment_id: int, w: Watching | None) -> None:
        """A deployment succeeds only once its background analysis passed: until it says
        Successful, the deployment is held (phase `paused`) and still watched; a Failed
        decision fails it (through `control`), `turnout promote` accepts it as it is."""
        if w is None or (w.last is not None and w.last.passed):
            return
        self.record(Event("info", f"waiting up to {w.settings.max_wait:g}s for the analysis to pass"))
        held_at = self.clock.now() + w.settings.max_wait
        held = False
        while w.last is None or not w.last.passed:
            if not held and self.clock.now() >= held_at:
                why = w.last.reason if w.last is not None else "no decision yet"
                self.record.phase(deployment_id, "paused", f"waiting for the analysis to pass: {why}")
                self.record(Event("paused", f"the analysis has not passed ({why}): it goes on by "
                                            "itself once it does; `turnout promote` accepts it, "
                                            "`turnout abort` goes back"))
                held = True
            if await control.wait(w.settings.interval, promote_ends=True):
                self.record(Event("info", "promoted before the analysis passed"))
                break
        if held:
            self.record.phase(deployment_id, "progressing")

    async def _throughout(self, control: Control, w: Watching) -> None:
        criteria, silence = Criteria.of(w.settings), Silence(w.settings.max_silent_intervals)
        unread = False
        while True:
            await self.clock.sleep(w.settings.interval)
            try:
                w.last = await self._decide(w.watch, w.baseline, w.start, criteria, silence, quiet=True)
            except TurnoutError as exc:  # the source could not be read: said once, tried again
                if not unread:
                    self.record(Event("info", f"analysis: cannot read the metrics: {exc}"))
                unread = True
                continue
            unread = False
            if w.last.failed:
                self._report(w.watch, w.baseline, w.last)
                control.fail(f"analysis failed: {w.last.reason}")
                return

    async def _start(self, step: Analyse) -> Reading:
        """Where an analysis's window opens: now, or when the preview opened."""
        opened = self._opened.pop(step.subject, None) if step.since_preview else None
        if opened is not None and (step.baseline is None or step.baseline in opened.counters):
            ago = self.clock.now() - opened.at
            self.record(Event("info", f"judging {describe_subject(step.subject)} on its preview "
                                      f"traffic since the preview opened {ago:.1f}s ago"))
            return opened
        if step.since_preview:  # resumed after a crash: the earlier traffic is not known
            self.record(Event("info", "judging the preview traffic from now on (the reading "
                                      "taken when the preview opened is gone)"))
        return await self._reading(step.subject, step.baseline)

    async def _reading(self, subject: Subject, baseline: Subject | None) -> Reading:
        subjects = [subject] if baseline is None else [subject, baseline]
        return Reading(self.clock.now(), await self.source.read(subjects))

    async def _decide(
        self, subject: Subject | None, baseline: Subject | None, start: Reading | None, criteria: Criteria,
        silence: Silence, *, quiet: bool = False,
    ) -> Decision:
        """The judge's decision on the windows since `start` (Failed after too many silent
        looks); recorded (unless `quiet`) and StepFailed when it is Failed."""
        assert subject is not None and start is not None
        try:
            now = await self._reading(subject, baseline)
        except AnalysisError as exc:  # the judge cannot judge: held like Inconclusive
            decision = Decision(Verdict.ERROR, f"cannot read the metrics: {exc}")
            if not quiet:
                self._report(subject, baseline, decision)
            return decision
        window = start.window(now, subject)
        against = start.window(now, baseline) if baseline is not None else None
        decision = self.judge.judge(window, against, criteria)
        if against is not None and isinstance(subject, CohortSubject) and not decision.failed:
            decision = self._whole(window, against, criteria, decision)
        if not silence.heard(window.counters.requests):
            decision = Decision(Verdict.FAILED, f"no data: no request for {describe_subject(subject)} "
                                f"in {silence.limit} looks in a row", decision.evidence)
        if quiet:
            return decision
        self._report(subject, baseline, decision)
        if decision.failed:
            raise StepFailed(f"gate failed: {decision.reason}")
        return decision

    def _whole(self, on: Window, off: Window, criteria: Criteria, decision: Decision) -> Decision:
        """A flag's code runs in every user's process, so its cohorts together (the whole
        service) are held to the absolute limits too: a crash that takes down the users
        outside the cohort as well fails the gate as soon as it shows, not once the cohort's
        own share has piled up enough failures. Judged without a baseline, which leaves the
        judge only its guardrails (always-valid bounds where the criteria compare)."""
        whole = Window(on.subject, on.counters.plus(off.counters), on.seconds)
        guard = self.judge.judge(whole, None, criteria)
        if not guard.failed:
            return decision
        return Decision(Verdict.FAILED, f"both cohorts together: {guard.reason}",
                        {**decision.evidence, "whole service": guard.evidence.get("canary")})

    def _report(self, subject: Subject, baseline: Subject | None, decision: Decision) -> None:
        self.record(Event("gate", f"{decision.verdict.value}: {decision.reason}", data={
            "verdict": decision.verdict.value, "reason": decision.reason,
            "subject": describe_subject(subject),
            "baseline": describe_subject(baseline) if baseline is not None else None,
            "evidence": decision.evidence,
        }))
