"""Request bodies of the API: parsing, validation into `field.path: message` problems,
and the in-memory book of what SDKs registered and counted.

Register and metrics bodies follow the shapes the Unleash SDKs send; fields this server
does not read are allowed (SDKs add new ones over time) but the ones it reads are
checked. Metrics are aggregated per flag (yes, no, per variant) and per application.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class BodyError(Exception):
    """A body that is not valid JSON or not the expected shape."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Registration(_Loose):
    appName: str = Field(min_length=1)
    instanceId: str = Field(min_length=1)
    sdkVersion: str = ""
    strategies: list[str] = []
    started: datetime
    interval: int = Field(ge=0)


class ToggleCount(_Loose):
    yes: int = Field(ge=0)
    no: int = Field(ge=0)
    variants: dict[str, int] = {}


class Bucket(_Loose):
    start: datetime
    stop: datetime
    toggles: dict[str, ToggleCount]


class MetricsReport(_Loose):
    appName: str = Field(min_length=1)
    instanceId: str = Field(min_length=1)
    bucket: Bucket


def validation_problems(exc: ValidationError) -> list[str]:
    """Each pydantic error as `field.path: message`."""
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        out.append(f"{where}: {error['msg']}")
    return out


def json_body(body: bytes) -> Any:
    """The parsed JSON of a body, or BodyError."""
    if not body.strip():
        raise BodyError(["body: expected a JSON document, got nothing"])
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError([f"body: invalid JSON ({exc})"]) from None


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body into `model`, or BodyError with every problem."""
    data = json_body(body)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BodyError(validation_problems(exc)) from None


class MetricsBook:
    """Registered SDK instances and their summed flag counts."""

    def __init__(self) -> None:
        self.toggles: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, dict[str, Any]] = {}

    def _app(self, name: str) -> dict[str, Any]:
        return self.apps.setdefault(name, {"instances": {}, "reports": 0})

    def register(self, reg: Registration, *, at: float) -> None:
        app = self._app(reg.appName)
        app["instances"][reg.instanceId] = {
            "sdkVersion": reg.sdkVersion, "strategies": reg.strategies,
            "started": reg.started.isoformat(), "interval": reg.interval, "lastSeen": at,
        }

    def record(self, report: MetricsReport, *, at: float) -> None:
        app = self._app(report.appName)
        app["reports"] += 1
        app["instances"].setdefault(report.instanceId, {})["lastSeen"] = at
        for name, count in report.bucket.toggles.items():
            total = self.toggles.setdefault(name, {"yes": 0, "no": 0, "variants": {}})
            total["yes"] += count.yes
            total["no"] += count.no
            for variant, n in count.variants.items():
                total["variants"][variant] = total["variants"].get(variant, 0) + n

    def as_json(self) -> dict[str, Any]:
        return {"toggles": self.toggles, "applications": self.apps}
