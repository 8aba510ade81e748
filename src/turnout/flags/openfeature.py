"""An OpenFeature provider backed by turnout's flags, evaluated in-process.

``TurnoutProvider`` wraps a flag source (a connected ``FlagClient``, or ``LocalFlags``)
and answers openfeature-sdk's resolve calls from its current state. A boolean is whether
the flag is on; a string, integer, float or object is the payload of the variant the
context gets (a string flag whose variant has no payload answers the variant's name).
A payload of the wrong type answers the caller's default with TYPE_MISMATCH; an unknown
flag, the default with FLAG_NOT_FOUND. The client's READY / CHANGED / STALE / ERROR
notices become the provider events of the same meaning.

OpenFeature's targeting key is Unleash's ``userId``; ``sessionId``, ``remoteAddress``,
``environment``, ``appName`` and ``currentTime`` attributes keep their Unleash meaning,
and every other attribute becomes one of the context's ``properties``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode as OFErrorCode
from openfeature.exception import ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import AbstractProvider, Metadata

from turnout.flags.client import ClientEvent, ClientStatus, FlagClient, Listener, Notice
from turnout.flags.model import Context, ErrorCode, Reason, Result, VariantResult

T = TypeVar("T")
ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]

_CONTEXT_FIELDS = frozenset({"userId", "sessionId", "remoteAddress", "environment", "appName",
                             "currentTime"})
_REASONS = {
    Reason.STATIC: OFReason.STATIC,
    Reason.TARGETING_MATCH: OFReason.TARGETING_MATCH,
    Reason.SPLIT: OFReason.SPLIT,
    Reason.DISABLED: OFReason.DISABLED,
    Reason.DEFAULT: OFReason.DEFAULT,
    Reason.ERROR: OFReason.ERROR,
}
_ERRORS = {
    ErrorCode.FLAG_NOT_FOUND: OFErrorCode.FLAG_NOT_FOUND,
    ErrorCode.PARSE_ERROR: OFErrorCode.PARSE_ERROR,
    ErrorCode.INVALID_CONTEXT: OFErrorCode.INVALID_CONTEXT,
    ErrorCode.GENERAL: OFErrorCode.GENERAL,
}


class FlagSource(Protocol):
    """What the provider needs from a flag client (``FlagClient`` and ``LocalFlags`` fit)."""

    @property
    def status(self) -> ClientStatus: ...
    def add_listener(self, listener: Listener) -> None: ...
    def remove_listener(self, listener: Listener) -> None: ...
    def wait_for_state(self, timeout: float) -> bool: ...
    def evaluate(self, name: str, context: Context | None = None) -> Result: ...
    def variant(self, name: str, context: Context | None = None) -> VariantResult: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


class _Mismatch(Exception):
    pass


def unleash_context(ctx: EvaluationContext | None) -> dict[str, Any]:
    """OpenFeature's evaluation context as an Unleash context."""
    out: dict[str, Any] = {}
    if ctx is None:
        return out
    properties: dict[str, Any] = {}
    for key, value in ctx.attributes.items():
        if key in _CONTEXT_FIELDS:
            out[key] = value
        elif key == "properties" and isinstance(value, Mapping):
            properties.update(value)
        else:
            properties[key] = value
    if ctx.targeting_key:
        out["userId"] = ctx.targeting_key
    if properties:
        out["properties"] = properties
    return out


def _error(default: T, code: OFErrorCode, message: str | None) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(value=default, reason=OFReason.ERROR, error_code=code,
                                 error_message=message)


def _string(found: VariantResult) -> str:
    if found.payload is None:
        return found.name
    if found.payload.type not in ("string", "csv"):
        raise _Mismatch(f"payload of type {found.payload.type!r}, not a string")
    return found.payload.value


def _number(found: VariantResult) -> str:
    if found.payload is None or found.payload.type != "number":
        kind = "no payload" if found.payload is None else f"a {found.payload.type!r} payload"
        raise _Mismatch(f"variant {found.name!r} has {kind}, not a number")
    return found.payload.value.strip()


def _integer(found: VariantResult) -> int:
    text = _number(found)
    try:
        return int(text)
    except ValueError:
        raise _Mismatch(f"payload {text!r} is not an integer") from None


def _float(found: VariantResult) -> float:
    text = _number(found)
    try:
        return float(text)
    except ValueError:
        raise _Mismatch(f"payload {text!r} is not a number") from None


def _object(found: VariantResult) -> ObjectValue:
    if found.payload is None or found.payload.type != "json":
        kind = "no payload" if found.payload is None else f"a {found.payload.type!r} payload"
        raise _Mismatch(f"variant {found.name!r} has {kind}, not JSON")
    value = json.loads(found.payload.value)  # ValueError → PARSE_ERROR
    if not isinstance(value, dict | list):
        raise _Mismatch(f"the JSON payload is a {type(value).__name__}, not an object or list")
    return value


class TurnoutProvider(AbstractProvider):
    """OpenFeature provider over a turnout flag source; every resolve is local and sync."""

    def __init__(self, source: FlagSource, *, init_timeout: float = 5.0) -> None:
        super().__init__()
        self._source = source
        self._init_timeout = init_timeout
        self._listening = False

    @classmethod
    def connect(cls, url: str, token: str, *, init_timeout: float = 5.0,
                **options: Any) -> TurnoutProvider:
        """A provider over a new ``FlagClient`` for the server at ``url``."""
        return cls(FlagClient(url, token, **options), init_timeout=init_timeout)

    @property
    def source(self) -> FlagSource:
        return self._source

    def get_metadata(self) -> Metadata:
        return Metadata(name="turnout")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Start the source and wait (bounded) for its first state."""
        if not self._listening:
            self._source.add_listener(self._on_notice)
            self._listening = True
        self._source.start()
        if not self._source.wait_for_state(self._init_timeout):
            raise ProviderNotReadyError(
                f"no flag state within {self._init_timeout:g}s; still trying in the background")
        if self._source.status is ClientStatus.STALE:
            # The SDK marks the provider READY once this returns; say STALE right after.
            threading.Timer(0.05, self._announce_stale).start()

    def shutdown(self) -> None:
        if self._listening:
            self._source.remove_listener(self._on_notice)
            self._listening = False
        self._source.close()

    def _announce_stale(self) -> None:
        if self._source.status is ClientStatus.STALE:
            self.emit_provider_stale(ProviderEventDetails(message="serving cached flags"))

    def _on_notice(self, notice: Notice) -> None:
        meta: dict[str, bool | str | int | float] = (
            {"revision": notice.revision} if notice.revision is not None else {})
        if notice.event is ClientEvent.READY:
            self.emit_provider_ready(ProviderEventDetails(message=notice.message, metadata=meta))
        elif notice.event is ClientEvent.CHANGED:
            self.emit_provider_configuration_changed(ProviderEventDetails(
                flags_changed=list(notice.flags_changed), message=notice.message, metadata=meta))
        elif notice.event is ClientEvent.STALE:
            self.emit_provider_stale(ProviderEventDetails(message=notice.message, metadata=meta))
        else:
            self.emit_provider_error(ProviderEventDetails(
                message=notice.message, error_code=OFErrorCode.GENERAL, metadata=meta))

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None,
                                ) -> FlagResolutionDetails[bool]:
        result = self._source.evaluate(flag_key, unleash_context(evaluation_context))
        if result.error_code is not None:
            return _error(default_value, _ERRORS[result.error_code], result.error_message)
        return FlagResolutionDetails(value=result.enabled, reason=_REASONS[result.reason],
                                     variant="on" if result.enabled else "off")

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None,
                               ) -> FlagResolutionDetails[str]:
        return self._typed(flag_key, default_value, evaluation_context, _string)

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None,
                                ) -> FlagResolutionDetails[int]:
        return self._typed(flag_key, default_value, evaluation_context, _integer)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None,
                              ) -> FlagResolutionDetails[float]:
        return self._typed(flag_key, default_value, evaluation_context, _float)

    def resolve_object_details(self, flag_key: str, default_value: ObjectValue,
                               evaluation_context: EvaluationContext | None = None,
                               ) -> FlagResolutionDetails[ObjectValue]:
        return self._typed(flag_key, default_value, evaluation_context, _object)

    def _typed(self, flag_key: str, default: T, ctx: EvaluationContext | None,
               convert: Callable[[VariantResult], T]) -> FlagResolutionDetails[T]:
        found = self._source.variant(flag_key, unleash_context(ctx))
        if found.error_code is not None:
            return _error(default, _ERRORS[found.error_code], found.error_message)
        if not found.enabled:  # flag off, no strategy matched, or no variants: the default
            return FlagResolutionDetails(value=default, reason=_REASONS[found.reason],
                                         variant=found.name)
        try:
            value = convert(found)
        except _Mismatch as exc:
            return _error(default, OFErrorCode.TYPE_MISMATCH, str(exc))
        except ValueError as exc:
            return _error(default, OFErrorCode.PARSE_ERROR, f"payload of {found.name!r}: {exc}")
        return FlagResolutionDetails(value=value, reason=_REASONS[found.reason], variant=found.name)
