"""The parts strategies are made of: match rules, the gate, analyses, canary and ramp
steps, and the blue-green tests on the preview address.

Each is a strict model of its own; which strategy kind reads which of them is
`turnout.spec.strategy`'s business.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Discriminator, Field, Tag, model_validator

from turnout.spec.values import Ratio, Strict
from turnout.units import Duration


class Match(Strict):
    """Send chosen users to the new revision: a header or cookie value, or user keys."""

    header: str | None = Field(default=None, description="request header to compare with values")
    cookie: str | None = Field(default=None, description="cookie to compare with values")
    values: list[str] = Field(
        default_factory=list, description="header or cookie values that match"
    )
    users: list[str] = Field(default_factory=list, description="user keys (see routing.user_key)")

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        if self.users and (self.header or self.cookie):
            raise ValueError("a match names either users or a header/cookie, not both")
        if not self.users and not (self.header or self.cookie):
            raise ValueError("a match needs users, a header or a cookie")
        if (self.header or self.cookie) and not self.values:
            raise ValueError("a header or cookie match needs values")
        return self


class Gate(Strict):
    """How the canary is judged: absolute limits on its error rate and p99 latency, and, with
    `max_error_rate_increase` or `max_p99_increase`, a comparison with the baseline serving at
    the same time by sequential tests that stay valid however often they look."""

    max_error_rate: Ratio = Field(
        default=0.01, description="5xx and connection errors / requests, as 0.01 or 1%"
    )
    max_p99: Duration = Field(default=1.0, description="highest acceptable 99th percentile latency")
    min_requests: int = Field(
        default=20, ge=0, description="fewer requests than this is inconclusive"
    )
    interval: Duration = Field(default=5.0, description="time between two looks at the counters")
    max_error_rate_increase: Ratio | None = Field(
        default=None, description="how far the canary's error rate may exceed the baseline's "
        "(e.g. 1%); set, the gate compares the two",
    )
    max_p99_increase: Duration | None = Field(
        default=None, description="how far the canary's p99 may exceed the baseline's (e.g. 50ms); "
        "set, the gate compares the two",
    )
    min_soak: Duration = Field(
        default=0.0, description="comparing: the least time watched before the gate passes"
    )
    alpha: Ratio = Field(
        default=0.01, description="comparing: the chance of failing a canary as good as its "
        "baseline, over a whole step, shared by the metrics",
    )
    max_silent_intervals: int | None = Field(
        default=None, ge=1, description="looks in a row without one canary request before the "
        "gate fails (no data); default: never, a silent canary is inconclusive",
    )

    @model_validator(mode="after")
    def _alpha_is_small(self) -> Gate:
        if not 0 < self.alpha < 0.5:
            raise ValueError("alpha must be above 0 and below 50%")
        return self


class Background(Gate):
    """`strategy.analysis`: a gate judged throughout the deployment, which it must pass to
    succeed."""

    max_wait: Duration = Field(
        default=60.0, description="at the end: how long to wait for it to pass before the "
        "deployment is held for a human (it still passes by itself later)",
    )


class Analysis(Strict):
    """A canary step that watches the new revision for a while; unset limits come from the gate."""

    duration: Duration = Field(default=30.0, description="how long to watch")
    max_error_rate: Ratio | None = Field(default=None, description="default: strategy.gate")
    max_p99: Duration | None = Field(default=None, description="default: strategy.gate")
    min_requests: int | None = Field(default=None, ge=0, description="default: strategy.gate")
    max_error_rate_increase: Ratio | None = Field(default=None, description="default: strategy.gate")
    max_p99_increase: Duration | None = Field(default=None, description="default: strategy.gate")
    min_soak: Duration | None = Field(default=None, description="default: strategy.gate")


class _PauseStep(Strict):
    """A step that is exactly one of `KINDS`; a bare `pause` waits for `turnout promote`."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "step"

    @model_validator(mode="before")
    @classmethod
    def _bare_pause(cls, data: object) -> object:
        # `{pause: {}}` or `{pause: null}` or `pause` alone waits for `turnout promote`.
        if isinstance(data, dict) and "pause" in data and data["pause"] in (None, {}, ""):
            data = {**data, "pause": "forever"}
        if data == "pause":
            data = {"pause": "forever"}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in self.KINDS if getattr(self, n) is not None]
        if len(given) != 1:
            *first, last = self.KINDS
            raise ValueError(f"each {self.WHAT} is exactly one of {', '.join(first)} or {last}")
        return self


class CanaryStep(_PauseStep):
    """Exactly one of: set the canary's weight, pause (bare pause waits for promote), analyse."""

    KINDS = ("weight", "pause", "analysis")

    weight: int | None = Field(
        default=None, ge=0, le=100, description="percent of traffic to the new revision"
    )
    pause: Duration | Literal["forever"] | None = Field(
        default=None, description="wait this long; without a duration, wait for `turnout promote`"
    )
    analysis: Analysis | None = None


class RampStep(_PauseStep):
    """One step of a feature-toggle ramp: exactly one of users, segment, percent, pause, analysis."""

    KINDS = ("users", "segment", "percent", "pause", "analysis")
    WHAT = "ramp step"

    users: list[str] | None = Field(default=None, description="switch the flag on for these user keys")
    segment: str | None = Field(default=None, description="switch the flag on for this segment's users")
    percent: int | None = Field(default=None, ge=0, le=100, description="sticky share of all users")
    pause: Duration | Literal["forever"] | None = Field(
        default=None, description="wait this long; without a duration, wait for `turnout promote`"
    )
    analysis: Analysis | None = None


class HttpTest(Strict):
    """A GET on the green fleet's preview address that must answer `expect_status`."""

    http: str = Field(description="a path requested on the preview address, e.g. /smoke")
    expect_status: int = Field(default=200, ge=100, le=599)


class CommandTest(Strict):
    """A command that must exit 0; it reaches the green fleet through TURNOUT_PREVIEW_URL."""

    command: list[str] = Field(min_length=1, description="argv; TURNOUT_PREVIEW_URL is set")
    timeout: Duration = Field(default=60.0, description="the test fails if it runs longer")


def _test_kind(value: object) -> str | None:
    if isinstance(value, HttpTest) or (isinstance(value, dict) and "http" in value):
        return "http-test"
    if isinstance(value, CommandTest) or (isinstance(value, dict) and "command" in value):
        return "command-test"
    return None


PreviewTest = Annotated[
    Annotated[HttpTest, Tag("http-test")] | Annotated[CommandTest, Tag("command-test")],
    Discriminator(
        _test_kind,
        custom_error_type="test_kind",
        custom_error_message="a test is either {http: /path} or {command: [argv]}",
    ),
]
