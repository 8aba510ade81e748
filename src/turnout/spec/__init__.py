"""The spec file (`turnout.yaml`): pydantic models, durations and percentages.

The models here are the contract of DESIGN.md's spec. Loading a file with error
messages that name the file, line and field lives in `turnout.specfile`.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, ClassVar, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from turnout.addresses import join_host_port, split_host_port
from turnout.routers.table import MIB, Limits, Timeouts
from turnout.units import Duration, parse_size


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


_COUNT_HELP = "expected a count such as 1 or a percentage such as 25%"


def parse_count(value: object) -> object:
    if isinstance(value, Count | dict):
        return value
    if isinstance(value, bool):
        raise ValueError(_COUNT_HELP)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a count cannot be negative")
        return Count(value=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?%", text):
            number = float(text[:-1])
            if not 0 <= number <= 100:
                raise ValueError("a percentage must be between 0% and 100%")
            return Count(value=number, percent=True)
        if text.isdigit():
            return Count(value=int(text))
    raise ValueError(f"{_COUNT_HELP}, got {value!r}")


CountOrPercent = Annotated[
    Count,
    BeforeValidator(parse_count),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+|\d+(\.\d+)?%)\s*$"},
            ],
            "examples": [1, "25%"],
        },
        mode="validation",
    ),
]


def _numbers_as_text(value: object) -> object:
    """YAML reads `8080` and `true` as numbers and booleans; argv and env want text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kind_shorthand(value: object) -> object:
    """`router: builtin` is short for `router: {kind: builtin}` (so for `platform`)."""
    return {"kind": value} if isinstance(value, str) else value


def _kind_schema(description: str) -> WithJsonSchema:
    kind = {"type": "string", "description": description}
    return WithJsonSchema(
        {"anyOf": [kind, {"type": "object", "properties": {"kind": kind},
                          "additionalProperties": False}]},
        mode="validation",
    )


class RouterChoice(_Strict):
    """Which router carries users' requests. The kinds are those `turnout.wiring` knows; it
    refuses an unknown one, and a spec that needs what the chosen router cannot do."""

    kind: str = Field(default="builtin", description="builtin: turnout's own proxy process")


class PlatformChoice(_Strict):
    """Where instances run. The kinds are those `turnout.wiring` knows."""

    kind: str = Field(default="local", description="local: processes on this machine")


RouterField = Annotated[RouterChoice, BeforeValidator(_kind_shorthand),
                        _kind_schema("builtin: turnout's own proxy process")]
PlatformField = Annotated[PlatformChoice, BeforeValidator(_kind_shorthand),
                          _kind_schema("local: processes on this machine")]


# What instances and test commands take from the deployer's environment unless the spec says
# otherwise: enough to find programs and speak the user's locale, and no tokens or credentials.
INHERIT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Run(_Strict):
    """How to start one instance of the service."""

    command: list[str] = Field(
        min_length=1, description="argv, never a shell; {port} {version} {slot}"
    )
    cwd: str = Field(default=".", description="relative to the spec file; {version} substituted")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment; PORT and TURNOUT_VERSION are always set",
    )
    inherit_env: list[str] = Field(
        default_factory=lambda: list(INHERIT_ENV),
        description="names of variables passed on from turnout's own environment; nothing else is "
        "(instances and blue-green test commands get these, `env` and the TURNOUT_* variables)",
    )
    grace: Duration = Field(default=10.0, description="SIGTERM, then SIGKILL after this long")

    @field_validator("command", mode="before")
    @classmethod
    def _argv_text(cls, value: object) -> object:
        return [_numbers_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _numbers_as_text(v) for k, v in value.items()}
        return value

    @field_validator("inherit_env")
    @classmethod
    def _variable_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, _; no digit first)")
            if name == "PORT" or name.startswith("TURNOUT_"):
                raise ValueError(f"{name} is set by turnout for each instance; it cannot be inherited")
        if len(set(value)) != len(value):
            raise ValueError("each name may appear once")
        return value


class Health(_Strict):
    """The HTTP health check every new instance must pass before it gets traffic."""

    path: str = Field(default="/healthz", description="requested with GET; any 2xx means healthy")
    interval: Duration = Field(default=1.0, description="time between two checks")
    timeout: Duration = Field(default=2.0, description="how long one check may take")
    deadline: Duration = Field(
        default=30.0, description="how long a new instance may take to become healthy"
    )

    @field_validator("path")
    @classmethod
    def _path_starts_with_slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


class UserKey(_Strict):
    """How a request names its user: a header and/or a cookie (stickiness and targeting)."""

    header: str | None = Field(
        default="X-User-Id", description="request header holding the user key"
    )
    cookie: str | None = Field(default=None, description="cookie holding the user key")


DEFAULT_BUFFER = 8 * MIB


def parse_buffering(value: object) -> int | None:
    """`routing.buffer_requests`: false (stream bodies), true (up to 8 MiB) or a size."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_BUFFER
    return parse_size(value)


BufferSize = Annotated[
    int | None,
    BeforeValidator(parse_buffering),
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0},
                   {"type": "string", "pattern": r"^\s*\d+\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$"}],
         "examples": [True, "16MiB"]},
        mode="validation",
    ),
]


class Routing(_Strict):
    """How the router picks an instance for a request, and what it holds clients to."""

    user_key: UserKey = Field(default_factory=UserKey)
    preview_listen: str | None = Field(
        default=None,
        description="where blue-green tests reach the green fleet; default: listen port + 1",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="flags the router evaluates for each request's user key and forwards to the app",
    )
    flags_header: str = Field(
        default="X-Turnout-Flags", description="the header that carries `name=on, other=off` to the app"
    )
    drain_timeout: Duration = Field(
        default=30.0, description="how long a removed instance may finish its in-flight requests"
    )
    limits: Limits = Field(default_factory=Limits, description="header size and count, connections")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="clients, instances and tunnels")
    buffer_requests: BufferSize = Field(
        default=None,
        description="read whole request bodies before calling the instance (true: up to 8MiB, or a size; "
        "larger bodies get 413), for apps with few sync workers; default: stream them",
    )
    trust_forwarded: bool = Field(
        default=True,
        description="keep X-Forwarded-Proto and X-Forwarded-Host a client sent (a TLS terminator in front); "
        "false replaces them",
    )


class Match(_Strict):
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


def parse_ratio(value: object) -> object:
    """`1%` or `0.01` -> 0.01."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*%\s*", value):
        return float(value.strip()[:-1].strip()) / 100.0
    return value


Ratio = Annotated[
    float,
    BeforeValidator(parse_ratio),
    Field(ge=0, le=1),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                   {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}],
         "examples": ["1%", 0.01]},
        mode="validation",
    ),
]


class Gate(_Strict):
    """The canary's first gate: its error rate and p99 latency from the router's counters."""

    max_error_rate: Ratio = Field(
        default=0.01, description="5xx and connection errors / requests, as 0.01 or 1%"
    )
    max_p99: Duration = Field(default=1.0, description="highest acceptable 99th percentile latency")
    min_requests: int = Field(
        default=20, ge=0, description="fewer requests than this is inconclusive"
    )
    interval: Duration = Field(default=5.0, description="time between two looks at the counters")


class Analysis(_Strict):
    """A canary step that watches the new revision for a while; unset limits come from the gate."""

    duration: Duration = Field(default=30.0, description="how long to watch")
    max_error_rate: Ratio | None = Field(default=None, description="default: strategy.gate")
    max_p99: Duration | None = Field(default=None, description="default: strategy.gate")
    min_requests: int | None = Field(default=None, ge=0, description="default: strategy.gate")


class _PauseStep(_Strict):
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


class HttpTest(_Strict):
    """A GET on the green fleet's preview address that must answer `expect_status`."""

    http: str = Field(description="a path requested on the preview address, e.g. /smoke")
    expect_status: int = Field(default=200, ge=100, le=599)


class CommandTest(_Strict):
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


# Strategies: one model per kind, each with only the fields that kind reads, so a field of
# another kind is refused by the model itself. A feature toggle also reads the fields of the
# kind it ships the code with (`ship`), written beside its own as the YAML always had them;
# it refuses the fields its `ship` kind does not read. The fields of each kind live in a
# mixin (`_RollingParams`, ...) that the kind and the feature toggle share, with their rules.


class _Params(_Strict):
    @classmethod
    def _reads(cls, info: ValidationInfo, name: str) -> bool:
        """Whether the strategy being validated reads field `name` (a feature toggle: whether
        its `ship` kind does)."""
        return True


class _RollingParams(_Params):
    max_surge: CountOrPercent = Field(
        default_factory=lambda: Count(value=1),
        description="rolling: instances above the fleet size",
    )
    max_unavailable: CountOrPercent = Field(
        default_factory=lambda: Count(value=0),
        validate_default=True,
        description="rolling: instances below the fleet size",
    )

    @field_validator("max_unavailable")
    @classmethod
    def _something_moves(cls, value: Count, info: ValidationInfo) -> Count:
        surge = info.data.get("max_surge")
        if cls._reads(info, "max_surge") and surge is not None and surge.value == 0 == value.value:
            raise ValueError("max_surge and max_unavailable cannot both be 0: nothing could move")
        return value


class _BlueGreenParams(_Params):
    tests: list[PreviewTest] = Field(
        default_factory=list, description="blue-green: checks on the green fleet before the switch"
    )
    auto_promote: bool = Field(default=True, description="blue-green: switch when the tests pass")
    rollback_window: Duration = Field(
        default=300.0, description="blue-green: keep the blue fleet warm this long after the switch"
    )


class _CanaryParams(_Params):
    steps: list[CanaryStep] = Field(
        default_factory=list, validate_default=True, description="canary: weights, pauses, analyses"
    )
    match: list[Match] = Field(default_factory=list, description="canary: users sent to the canary")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[CanaryStep], info: ValidationInfo) -> list[CanaryStep]:
        if not value and cls._reads(info, "steps"):
            raise ValueError("a canary needs steps, e.g. [{weight: 10}, {pause: 30s}, {weight: 100}]")
        weights = [s.weight for s in value if s.weight is not None]
        for before, after in itertools.pairwise(weights):
            if after < before:
                raise ValueError(f"canary step weights must not decrease: {before} then {after}")
        return value


class BigBang(_Strict):
    """Big bang: every old instance out, every new one in; downtime by design."""

    kind: Literal["big-bang"] = "big-bang"


class Rolling(_RollingParams):
    """Rolling: replace instances in batches of `max_surge + max_unavailable`."""

    kind: Literal["rolling"] = "rolling"


class BlueGreen(_BlueGreenParams):
    """Blue-green: a full green fleet, tested on the preview address, then one switch."""

    kind: Literal["blue-green"] = "blue-green"


class Canary(_CanaryParams):
    """Canary: a growing share of traffic to the new revision, judged by the gate."""

    kind: Literal["canary"] = "canary"
    gate: Gate = Field(default_factory=Gate)


ShipKind = Literal["big-bang", "rolling", "blue-green", "canary"]


class _ToggleHead(_Strict):
    kind: Literal["feature-toggle"] = "feature-toggle"
    flag: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="feature-toggle: the flag to ramp")
    ship: ShipKind = Field(
        default="rolling", description="feature-toggle: the strategy that puts the code out, flag off"
    )


class FeatureToggle(_CanaryParams, _BlueGreenParams, _RollingParams, _ToggleHead):
    """Feature toggle: ship the code dark with `ship` (reading that strategy's fields), then
    ramp the flag to users, segments and percentages, pausing with the gate."""

    ramp: list[RampStep] = Field(
        default_factory=list, description="feature-toggle: users, segments, percentages, pauses"
    )
    gate: Gate = Field(default_factory=Gate)

    @field_validator(*_RollingParams.model_fields, *_BlueGreenParams.model_fields,
                     *_CanaryParams.model_fields)
    @classmethod
    def _shipped_by(cls, value: object, info: ValidationInfo) -> object:
        """A shipping field other than the default is refused unless `ship` reads it."""
        name = str(info.field_name)
        default = cls.model_fields[name].get_default(call_default_factory=True)
        if "ship" in info.data and not cls._reads(info, name) and value != default:
            raise ValueError(f"only a {owners(name)} strategy uses {name}; "
                             f"this feature-toggle ships with {info.data['ship']!r}")
        return value

    @classmethod
    def _reads(cls, info: ValidationInfo, name: str) -> bool:
        """Whether the strategy it ships with reads `name` (not known when `ship` was invalid)."""
        ship = info.data.get("ship")
        return ship is not None and name in STRATEGIES[ship].model_fields

    def fields_in_use(self) -> list[str]:
        """Its own fields and those of the strategy it ships with, in the order of the model."""
        read = fields_read("feature-toggle", self.ship)
        return [n for n in type(self).model_fields if n in read]

    @property
    def shipping(self) -> BigBang | Rolling | BlueGreen | Canary:
        """The strategy that puts the code out, with the fields this toggle gives it."""
        model = STRATEGIES[self.ship]
        fields = {n: getattr(self, n) for n in model.model_fields if n != "kind"}
        shipped = model.model_validate(fields)
        assert not isinstance(shipped, FeatureToggle)
        return shipped


STRATEGIES: dict[str, type[BigBang | Rolling | BlueGreen | Canary | FeatureToggle]] = {
    "big-bang": BigBang, "rolling": Rolling, "blue-green": BlueGreen, "canary": Canary,
    "feature-toggle": FeatureToggle,
}
_SHIP_FIELDS = {*_RollingParams.model_fields, *_BlueGreenParams.model_fields,
                *_CanaryParams.model_fields}


def fields_read(kind: str, ship: object = None) -> set[str]:
    """The fields a strategy of `kind` reads: a feature toggle's own and those of its `ship`
    kind (rolling when `ship` is not one)."""
    model = STRATEGIES[kind]
    if model is not FeatureToggle:
        return set(model.model_fields)
    shipped = STRATEGIES[ship] if isinstance(ship, str) and ship in get_args(ShipKind) else Rolling
    return {n for n in model.model_fields if n not in _SHIP_FIELDS} | set(shipped.model_fields)


def owners(name: str) -> str:
    """The kinds whose own field `name` is: `canary`, `canary or feature-toggle` (a feature
    toggle also reads its `ship` kind's fields; those are not its own)."""
    kinds = [k for k, model in STRATEGIES.items() if name in model.model_fields
             and not (model is FeatureToggle and name in _SHIP_FIELDS)]
    return " or ".join(kinds)


_KINDS = "'big-bang', 'rolling', 'blue-green', 'canary' or 'feature-toggle'"


def _strategy_kind(value: object) -> object:
    if isinstance(value, dict):
        kind = value.get("kind", "rolling")
        return kind if isinstance(kind, str) and kind in STRATEGIES else None
    kind = getattr(value, "kind", None)
    return kind if kind in STRATEGIES else None


Strategy = Annotated[
    Annotated[BigBang, Tag("big-bang")] | Annotated[Rolling, Tag("rolling")]
    | Annotated[BlueGreen, Tag("blue-green")] | Annotated[Canary, Tag("canary")]
    | Annotated[FeatureToggle, Tag("feature-toggle")],
    Discriminator(
        _strategy_kind,
        custom_error_type="strategy_kind",
        custom_error_message=f"expected {_KINDS}",
        custom_error_context={"expected": _KINDS},
    ),
]
"""How a new version replaces the stable one: one model per kind, `rolling` when none is named."""

_STRATEGY: TypeAdapter[Strategy] = TypeAdapter(Strategy)


def parse_strategy(data: object) -> Strategy:
    """A strategy from plain data (`{kind: canary, steps: [...]}`); raises ValidationError."""
    return _STRATEGY.validate_python(data)


class Spec(_Strict):
    """One service and how to deploy it: the contents of turnout.yaml."""

    service: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$",
        description="the service's name: lowercase, digits, . _ -",
    )
    listen: str = Field(
        default="127.0.0.1:8080", description="host:port where users connect: the router"
    )
    instances: int = Field(
        default=1, ge=1, le=256, description="how many copies of each revision run"
    )
    run: Run
    health: Health = Field(default_factory=Health)
    routing: Routing = Field(default_factory=Routing)
    strategy: Strategy = Field(default_factory=Rolling)
    router: RouterField = Field(
        default_factory=RouterChoice, description="the router: `builtin`, or {kind: ...}"
    )
    platform: PlatformField = Field(
        default_factory=PlatformChoice, description="where instances run: `local`, or {kind: ...}"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    def preview_listen(self) -> str:
        if self.routing.preview_listen:
            return self.routing.preview_listen
        host, port = split_host_port(self.listen)
        return join_host_port(host, port + 1)


def split_address(value: str) -> tuple[str, int]:
    return split_host_port(value)
