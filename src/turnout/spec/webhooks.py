"""Webhooks in the spec: the HTTP calls a deployment makes at its turning points.

Every strategy kind takes a list of them (`strategy.webhooks`). `when` says at which point:
three are gates that must answer 2xx for the deployment to go on (`pre-rollout`, before
anything starts; `confirm-rollout`, before each change of traffic; `confirm-promotion`,
before the new revision becomes the stable one), `rollback` is told once a rollback has
finished, and `event` receives every event that matters without ever holding the deployment
up. What the engine does with them is `turnout.engine.webhooks`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from turnout.spec.values import Strict, numbers_as_text
from turnout.units import Duration

When = Literal["pre-rollout", "confirm-rollout", "confirm-promotion", "rollback", "event"]

GATE_TIMEOUT = 10.0  # seconds a gate or rollback webhook may take, unless its spec says
EVENT_TIMEOUT = 2.0  # an event webhook's: it is sent beside the deployment and must not lag it

_URL = re.compile(r"^https?://[^/?#\s]+[^\s]*$", re.IGNORECASE)
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)

HeaderValue = Annotated[str, BeforeValidator(numbers_as_text)]


class Webhook(Strict):
    """One HTTP POST with a JSON description of the deployment, made at `when`."""

    when: When = Field(description="pre-rollout, confirm-rollout, confirm-promotion (gates: "
                       "anything but 2xx fails them), rollback (told after one), or event (every "
                       "event that matters, never holding the deployment up)")
    url: str = Field(description="an http:// or https:// URL", examples=["http://127.0.0.1:9000/check"])
    timeout: Duration | None = Field(
        default=None, description=f"the longest a call may take, answer included; default "
        f"{GATE_TIMEOUT:g}s ({EVENT_TIMEOUT:g}s for event)",
    )
    retries: int = Field(
        default=0, ge=0, le=10, description="further attempts after a call that failed (not for "
        "event), a second apart; every attempt is recorded",
    )
    headers: dict[str, HeaderValue] = Field(default_factory=dict, description="sent with every call")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not _URL.match(value):
            raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
        try:
            _HTTP_URL.validate_python(value)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"].removeprefix("Input should be a valid URL, ")
            raise ValueError(f"{value!r} is not a valid URL: {why}") from None
        return value

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("a webhook's timeout must be above 0")
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of header {name} must be one line")
        return value

    @field_validator("retries")
    @classmethod
    def _events_are_not_retried(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("when") == "event":
            raise ValueError("an event webhook is sent once per event: retries is for the others")
        return value

    @property
    def seconds(self) -> float:
        """The timeout in effect."""
        if self.timeout is not None:
            return self.timeout
        return EVENT_TIMEOUT if self.when == "event" else GATE_TIMEOUT
