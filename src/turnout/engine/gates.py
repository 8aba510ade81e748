"""Gates: the pauses and analyses of a plan, judged on live traffic while they wait.

A pause or analysis step names the subject it watches (the canary revision, a flag's `on`
cohort) and its baseline (the stable revision, the flag's `off` cohort). At the start the
gate takes a reading of both from the `MetricSource`; at every `gate.interval` it takes
another and asks the `Judge` about the two windows since the start. Every decision is
recorded with its evidence. Failed rolls back at once; a step only continues on its own
after Successful: a pause or analysis that ends Inconclusive (or Error) holds the
deployment, phase `paused`, still watched, until `turnout promote` or `turnout abort`.
"""

from __future__ import annotations

from turnout.analysis.judge import Criteria, Decision, Judge
from turnout.analysis.sources import MetricSource, Reading
from turnout.clock import Clock
from turnout.engine.control import Control, StepFailed
from turnout.engine.events import Event, Recorder
from turnout.plan import Analyse, Pause, Subject, describe_subject
from turnout.spec import Gate, Spec


class Gates:
    def __init__(
        self, *, spec: Spec, source: MetricSource, judge: Judge, clock: Clock, record: Recorder
    ) -> None:
        self.spec, self.source, self.judge = spec, source, judge
        self.clock, self.record = clock, record

    @property
    def gate(self) -> Gate:
        """The strategy's gate (its defaults for a strategy that has none)."""
        gate = getattr(self.spec.strategy, "gate", None)
        return gate if isinstance(gate, Gate) else Gate()

    async def pause(self, control: Control, deployment_id: int, step: Pause) -> None:
        if step.seconds is None:
            self.record.phase(deployment_id, "paused", "waiting for promote")
            self.record(Event("paused", "paused: `turnout promote` continues, `turnout abort` goes back"))
        gate = self.gate
        criteria = Criteria(gate.max_error_rate, gate.max_p99, gate.min_requests)
        end = None if step.seconds is None else self.clock.now() + step.seconds
        start = await self._reading(step.watch, step.baseline) if step.watch is not None else None
        decision, promoted = await self._watch(control, end, step, start, criteria)
        if not promoted and decision is not None and not decision.passed:
            kind = decision.verdict.value
            self.record.phase(deployment_id, "paused", f"{kind.lower()}: {decision.reason}")
            self.record(Event("paused", f"gate {kind} at the end of the pause ({decision.reason}): "
                                        "`turnout promote` continues, `turnout abort` goes back"))
            await self._watch(control, None, step, start, criteria)
        self.record.phase(deployment_id, "progressing")

    async def _watch(
        self, control: Control, end: float | None, step: Pause, start: Reading | None, criteria: Criteria
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
                decision = await self._decide(step.watch, step.baseline, start, criteria)
        if decision is None and judging:  # a pause too short for one interval is still judged once
            decision = await self._decide(step.watch, step.baseline, start, criteria)
        return decision, False

    async def analyse(self, control: Control, deployment_id: int, step: Analyse) -> None:
        criteria = Criteria(step.max_error_rate, step.max_p99, step.min_requests)
        start = await self._reading(step.subject, step.baseline)
        end = self.clock.now() + step.seconds
        decision: Decision | None = None
        while self.clock.now() < end:
            await control.wait(min(self.gate.interval, end - self.clock.now()), promote_ends=False)
            decision = await self._decide(step.subject, step.baseline, start, criteria, quiet=True)
            if decision.failed:
                break
        if decision is None:
            decision = await self._decide(step.subject, step.baseline, start, criteria, quiet=True)
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

    async def _reading(self, subject: Subject, baseline: Subject | None) -> Reading:
        subjects = [subject] if baseline is None else [subject, baseline]
        return Reading(self.clock.now(), await self.source.read(subjects))

    async def _decide(
        self, subject: Subject | None, baseline: Subject | None, start: Reading | None, criteria: Criteria,
        *, quiet: bool = False,
    ) -> Decision:
        """The judge's decision on the windows since `start`; recorded (unless `quiet`) and
        StepFailed when it is Failed."""
        assert subject is not None and start is not None
        now = await self._reading(subject, baseline)
        decision = self.judge.judge(start.window(now, subject),
                                    start.window(now, baseline) if baseline is not None else None, criteria)
        if quiet:
            return decision
        self._report(subject, baseline, decision)
        if decision.failed:
            raise StepFailed(f"gate failed: {decision.reason}")
        return decision

    def _report(self, subject: Subject, baseline: Subject | None, decision: Decision) -> None:
        self.record(Event("gate", f"{decision.verdict.value}: {decision.reason}", data={
            "verdict": decision.verdict.value, "reason": decision.reason,
            "subject": describe_subject(subject),
            "baseline": describe_subject(baseline) if baseline is not None else None,
            "evidence": decision.evidence,
        }))
