"""The plan vocabulary: the steps a plan is made of, which both strategies and the engine import.

Steps are frozen, serialisable and each safe to run twice. A strategy returns a list of
them; the executor runs them in order and stores the index of the next one after each,
so a plan survives the control plane dying. Steps name revisions by id and instances by
slot, never by address: addresses belong to the world the executor re-reads on resume.

What a gate watches is a typed subject (a revision, or the users a flag is on or off
for), compared with a baseline subject; plans stored before subjects existed named the
watched thing with a string (`"v2-abc"`, `"flag:x:on"`) and still load.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from turnout.spec import CommandTest, HttpTest


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RevisionSubject(_Step):
    """Every request a revision's instances answered."""

    kind: Literal["revision"] = "revision"
    revision: str


class CohortSubject(_Step):
    """The requests of users a flag is on (or, with `on=False`, off) for."""

    kind: Literal["cohort"] = "cohort"
    flag: str
    on: bool = True


Subject = Annotated[RevisionSubject | CohortSubject, Field(discriminator="kind")]


def subject_of(old: object) -> object:
    """A subject from the string older plans stored (`flag:<name>:on` or a revision id)."""
    if not isinstance(old, str):
        return old
    if old.startswith("flag:") and old.count(":") >= 2:
        flag, _, state = old.removeprefix("flag:").rpartition(":")
        return CohortSubject(flag=flag, on=state != "off")
    return RevisionSubject(revision=old)


def describe_subject(subject: RevisionSubject | CohortSubject) -> str:
    match subject:
        case RevisionSubject(revision=r):
            return r
        case CohortSubject(flag=f, on=on):
            return f"users with flag {f} {'on' if on else 'off'}"
    return str(subject)  # pragma: no cover


class Start(_Step):
    """Start these slots of a revision (slots already running are kept)."""

    kind: Literal["start"] = "start"
    revision: str
    slots: tuple[int, ...]


class WaitHealthy(_Step):
    kind: Literal["wait-healthy"] = "wait-healthy"
    revision: str
    slots: tuple[int, ...]


class RoutePool(_Step):
    revision: str
    weight: int = Field(ge=0)
    slots: tuple[int, ...]


class Route(_Step):
    """Apply one routing table: the pools listed (newest first), match rules, preview."""

    kind: Literal["route"] = "route"
    pools: tuple[RoutePool, ...]
    match: tuple[MatchTo, ...] = ()
    preview: str | None = None


class MatchTo(_Step):
    revision: str
    header: str | None = None
    cookie: str | None = None
    values: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


class RunTests(_Step):
    kind: Literal["run-tests"] = "run-tests"
    revision: str
    tests: tuple[HttpTest | CommandTest, ...]


class Pause(_Step):
    """Wait `seconds` (None: until `turnout promote`), watching `watch` with the gate if set;
    `baseline` is what it is compared with (the stable revision, the flag's off cohort)."""

    kind: Literal["pause"] = "pause"
    seconds: float | None
    watch: Subject | None = None
    baseline: Subject | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_watch(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("watch"), str):
            data = {**data, "watch": subject_of(data["watch"])}
        return data


class Analyse(_Step):
    """Judge `subject` against `baseline` on the router's counters for `seconds`;
    Inconclusive pauses."""

    kind: Literal["analyse"] = "analyse"
    subject: Subject
    baseline: Subject | None = None
    seconds: float
    max_error_rate: float
    max_p99: float
    min_requests: int
    # Comparing with the baseline (either increase set): sequential tests (see turnout.analysis).
    max_error_rate_increase: float | None = None
    max_p99_increase: float | None = None
    min_soak: float = 0.0
    alpha: float = 0.01
    # Blue-green's check before the switch: the window opens with the preview (so the tests'
    # traffic counts) and closes `seconds` after this step starts.
    since_preview: bool = False

    @model_validator(mode="before")
    @classmethod
    def _old_revision(cls, data: Any) -> Any:
        if isinstance(data, dict) and "revision" in data and "subject" not in data:
            data = {k: v for k, v in data.items() if k != "revision"} | {
                "subject": subject_of(data["revision"])}
        return data


class Drain(_Step):
    kind: Literal["drain"] = "drain"
    revision: str
    slots: tuple[int, ...]


class Stop(_Step):
    kind: Literal["stop"] = "stop"
    revision: str
    slots: tuple[int, ...]


class Promote(_Step):
    """Record `revision` as stable: it now serves all traffic."""

    kind: Literal["promote"] = "promote"
    revision: str


class KeepWarm(_Step):
    """Leave these slots running, out of traffic, for `seconds` so a rollback is a flip."""

    kind: Literal["keep-warm"] = "keep-warm"
    revision: str
    slots: tuple[int, ...]
    seconds: float


class SetFlag(_Step):
    """Write the flag's rollout and push it to the router: off, or on for these users,
    segments and sticky percentage (the feature-toggle strategy's ramp)."""

    kind: Literal["set-flag"] = "set-flag"
    flag: str
    enabled: bool
    users: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    percent: int = 0


Route.model_rebuild()

Step = Annotated[
    Start | WaitHealthy | Route | RunTests | Pause | Analyse | Drain | Stop | Promote | KeepWarm | SetFlag,
    Field(discriminator="kind"),
]
_PLAN = TypeAdapter(list[Step])


def dump_plan(plan: list[Step]) -> list[dict[str, object]]:
    return [step.model_dump(mode="json") for step in plan]


def load_plan(data: list[dict[str, object]]) -> list[Step]:
    return _PLAN.validate_python(data)


def plan_hash(plan: list[Step]) -> str:
    return stored_plan_hash(dump_plan(plan))


def stored_plan_hash(data: list[dict[str, object]]) -> str:
    """The hash of a plan as stored (JSON data), whichever version of turnout stored it."""
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def describe(step: Step) -> str:
    """One line for humans."""
    match step:
        case Start(revision=r, slots=s) | WaitHealthy(revision=r, slots=s):
            verb = "start" if isinstance(step, Start) else "wait until healthy:"
            return f"{verb} {r} slots {list(s)}"
        case Route(pools=pools, match=match, preview=preview):
            split = ", ".join(f"{p.revision} {p.weight} ({len(p.slots)} inst)" for p in pools) or "none"
            extra = f"; {len(match)} match rule(s)" if match else ""
            extra += f"; preview {preview}" if preview else ""
            return f"route: {split}{extra}"
        case RunTests(revision=r, tests=t):
            return f"run {len(t)} test(s) against {r} on the preview address"
        case Pause(seconds=None):
            return "pause until `turnout promote`"
        case Pause(seconds=s):
            return f"pause {s:g}s"
        case Analyse(subject=subject, baseline=baseline, seconds=s, since_preview=preview):
            against = f" against {describe_subject(baseline)}" if baseline else ""
            traffic = " on its preview traffic" if preview else ""
            return f"analyse {describe_subject(subject)}{traffic}{against} for {s:g}s"
        case Drain(revision=r, slots=s):
            return f"drain {r} slots {list(s)}"
        case Stop(revision=r, slots=s):
            return f"stop {r} slots {list(s)}"
        case Promote(revision=r):
            return f"promote {r} to stable"
        case KeepWarm(revision=r, slots=s, seconds=sec):
            return f"keep {r} slots {list(s)} warm for {sec:g}s"
        case SetFlag(flag=f, enabled=False):
            return f"flag {f}: off"
        case SetFlag(flag=f, users=u, segments=g, percent=p):
            parts = [f"{len(u)} user(s)"] if u else []
            parts += [f"segment {s}" for s in g] + ([f"{p}% of users"] if p else [])
            return f"flag {f}: on for " + (", ".join(parts) or "nobody yet")
    return step.kind  # pragma: no cover
