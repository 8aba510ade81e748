"""The spec file (`turnout.yaml`): pydantic models, durations and percentages.

The models here are the contract of DESIGN.md's spec. Loading a file with error
messages that name the file, line and field lives in `turnout.specfile`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """`500ms`, `30s`, `5m`, `1h` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"expected a duration such as 500ms, 30s or 5m, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class Count(BaseModel):
    """A count of instances or a percentage of the fleet (`2` or `25%`)."""

    model_config = ConfigDict(frozen=True)
    value: float
    percent: bool = False

    def resolve(self, total: int, *, round_up: bool) -> int:
        if not self.percent:
            return int(self.value)
        exact = total * self.value / 100.0
        return int(-(-exact // 1)) if round_up else int(exact // 1)


def parse_count(value: object) -> object:
    if isinstance(value, Count | dict):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a count such as 1 or a percentage such as 25%")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a count cannot be negative")
        return Count(value=value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            number = float(text[:-1])
            if not 0 <= number <= 100:
                raise ValueError("a percentage must be between 0% and 100%")
            return Count(value=number, percent=True)
        if text.isdigit():
            return Count(value=int(text))
    raise ValueError(f"expected a count such as 1 or a percentage such as 25%, got {value!r}")


CountOrPercent = Annotated[Count, BeforeValidator(parse_count)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Run(_Strict):
    command: list[str] = Field(min_length=1, description="argv, never a shell; {port} {version} {slot}")
    cwd: str = Field(".", description="relative to the spec file; {version} substituted")
    env: dict[str, str] = Field(default_factory=dict)
    grace: Duration = Field(10.0, description="SIGTERM, then SIGKILL after this long")


class Health(_Strict):
    path: str = "/healthz"
    interval: Duration = 1.0
    timeout: Duration = 2.0
    deadline: Duration = 30.0

    @field_validator("path")
    @classmethod
    def _path_starts_with_slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


class UserKey(_Strict):
    header: str | None = "X-User-Id"
    cookie: str | None = None


class Routing(_Strict):
    user_key: UserKey = Field(default_factory=UserKey)
    preview_listen: str | None = Field(
        None, description="where blue-green tests reach the green fleet; default: listen port + 1"
    )
    drain_timeout: Duration = 30.0


class Match(_Strict):
    """Send chosen users to the new revision: a header or cookie value, or user keys."""

    header: str | None = None
    cookie: str | None = None
    values: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        if self.users and (self.header or self.cookie):
            raise ValueError("a match names either users or a header/cookie, not both")
        if not self.users and not (self.header or self.cookie):
            raise ValueError("a match needs users, a header or a cookie")
        if (self.header or self.cookie) and not self.values:
            raise ValueError("a header or cookie match needs values")
        return self


class Gate(_Strict):
    """The canary's first gate: its error rate and p99 latency from the router's counters."""

    max_error_rate: float = Field(0.01, ge=0, le=1, description="5xx and connection errors / requests")
    max_p99: Duration = 1.0
    min_requests: int = Field(20, ge=0)
    interval: Duration = 5.0


class Analysis(_Strict):
    duration: Duration = 30.0
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_p99: Duration | None = None
    min_requests: int | None = Field(None, ge=0)


class CanaryStep(_Strict):
    weight: int | None = Field(None, ge=0, le=100)
    pause: Duration | Literal["forever"] | None = None
    analysis: Analysis | None = None

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
    def _exactly_one(self) -> CanaryStep:
        given = [n for n in ("weight", "pause", "analysis") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("each step is exactly one of weight, pause or analysis")
        return self


class HttpTest(_Strict):
    http: str = Field(description="a path requested on the preview address, e.g. /smoke")
    expect_status: int = Field(200, ge=100, le=599)


class CommandTest(_Strict):
    command: list[str] = Field(min_length=1, description="argv; TURNOUT_PREVIEW_URL is set")
    timeout: Duration = 60.0


class Strategy(_Strict):
    kind: Literal["big-bang", "rolling", "blue-green", "canary", "feature-toggle"] = "rolling"
    # rolling
    max_surge: CountOrPercent = Field(default_factory=lambda: Count(value=1))
    max_unavailable: CountOrPercent = Field(default_factory=lambda: Count(value=0))
    # blue-green
    tests: list[HttpTest | CommandTest] = Field(default_factory=list)
    auto_promote: bool = True
    rollback_window: Duration = 300.0
    # canary
    steps: list[CanaryStep] = Field(default_factory=list)
    match: list[Match] = Field(default_factory=list)
    gate: Gate = Field(default_factory=Gate)

    @model_validator(mode="after")
    def _check(self) -> Strategy:
        if self.kind == "rolling" and self.max_surge.value == 0 and self.max_unavailable.value == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0: nothing could move")
        if self.kind == "canary":
            weights = [s.weight for s in self.steps if s.weight is not None]
            if weights != sorted(weights):
                raise ValueError("canary step weights must not decrease")
        return self


class Spec(_Strict):
    service: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    listen: str = Field("127.0.0.1:8080", description="host:port where users connect: the router")
    instances: int = Field(1, ge=1, le=256)
    run: Run
    health: Health = Field(default_factory=Health)
    routing: Routing = Field(default_factory=Routing)
    strategy: Strategy = Field(default_factory=Strategy)
    router: Literal["builtin"] = "builtin"
    platform: Literal["local"] = "local"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    def preview_listen(self) -> str:
        if self.routing.preview_listen:
            return self.routing.preview_listen
        host, port = split_address(self.listen)
        return f"{host}:{port + 1}"


def split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port such as 127.0.0.1:8080, got {value!r}")
    return host, int(port)
