"""The strategy union: one model per kind (big bang, rolling, blue-green, canary, feature
toggle), which fields each kind reads, and the discriminator that picks the model.

A field of another kind is refused by the model itself, and `owners` names the kind that
reads it; `fields_read` is what `--strategy KIND` keeps when the kind changes.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal, get_args

from pydantic import Discriminator, Field, Tag, TypeAdapter, ValidationInfo, field_validator

from turnout.spec.steps import Analysis, Background, CanaryStep, Gate, Match, PreviewTest, RampStep
from turnout.spec.values import Count, CountOrPercent, Strict
from turnout.spec.webhooks import Webhook
from turnout.units import Duration

# Strategies: one model per kind, each with only the fields that kind reads, so a field of
# another kind is refused by the model itself. A feature toggle also reads the fields of the
# kind it ships the code with (`ship`), written beside its own as the YAML always had them;
# it refuses the fields its `ship` kind does not read. The fields of each kind live in a
# mixin (`_RollingParams`, ...) that the kind and the feature toggle share, with their rules.


class _Watched(Strict):
    analysis: Background | None = Field(
        default=None, description="judged throughout the deployment at its interval: the new "
        "revision against the stable one (a feature toggle: the flag's on cohort against its "
        "off cohort); a failure rolls back at once",
    )


class _Hooked(Strict):
    """Every kind's webhooks; first among a kind's bases, so that they follow its own fields
    when a spec is written out."""

    webhooks: list[Webhook] = Field(
        default_factory=list, description="HTTP calls at the deployment's turning points: gates "
        "before it starts, before each change of traffic and before promotion; after a rollback; "
        "and every event",
    )


class _Params(Strict):
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
    preview_analysis: Analysis | None = Field(
        default=None, description="blue-green: the green fleet judged before the switch on its "
        "preview traffic (the tests' and any other), from the moment the preview opens until "
        "`duration` after the tests; unset limits are the gate's defaults, and with an increase "
        "set it is compared with the blue fleet's live traffic",
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


class BigBang(_Hooked, _Watched):
    """Big bang: every old instance out, every new one in; downtime by design."""

    kind: Literal["big-bang"] = "big-bang"


class Rolling(_Hooked, _RollingParams, _Watched):
    """Rolling: replace instances in batches of `max_surge + max_unavailable`."""

    kind: Literal["rolling"] = "rolling"


class BlueGreen(_Hooked, _BlueGreenParams, _Watched):
    """Blue-green: a full green fleet, tested on the preview address, then one switch."""

    kind: Literal["blue-green"] = "blue-green"


class Canary(_Hooked, _CanaryParams, _Watched):
    """Canary: a growing share of traffic to the new revision, judged by the gate."""

    kind: Literal["canary"] = "canary"
    gate: Gate = Field(default_factory=Gate)


ShipKind = Literal["big-bang", "rolling", "blue-green", "canary"]


class _ToggleHead(Strict):
    kind: Literal["feature-toggle"] = "feature-toggle"
    flag: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="feature-toggle: the flag to ramp")
    ship: ShipKind = Field(
        default="rolling", description="feature-toggle: the strategy that puts the code out, flag off"
    )
    evaluated_by: Literal["router", "app"] = Field(
        default="router",
        description="feature-toggle: who evaluates the flag for each request: the router (and "
                    "tells the app in a header), or the app (its SDK asks `turnout server`; the "
                    "gates then read the app's metrics per cohort from Prometheus)",
    )


class FeatureToggle(_Hooked, _CanaryParams, _BlueGreenParams, _RollingParams, _ToggleHead,
                    _Watched):
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
