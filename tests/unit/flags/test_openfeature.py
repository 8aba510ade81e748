"""The OpenFeature provider over a local flag state: types, reasons, errors, context, events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from turnout.flags.client import LocalFlags
from turnout.flags.hashing import normalized_hash
from turnout.flags.openfeature import TurnoutProvider, unleash_context


def flag(name: str, *strategies: dict[str, Any], enabled: bool = True, **extra: Any) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": list(strategies), **extra}


def with_variant(name: str, payload: dict[str, str] | None) -> dict[str, Any]:
    variant: dict[str, Any] = {"name": name, "weight": 1000, "stickiness": "default"}
    if payload is not None:
        variant["payload"] = payload
    return {"name": "default", "variants": [variant]}


def doc(*features: dict[str, Any], revision: int = 1) -> dict[str, Any]:
    return {"version": 2, "features": list(features), "segments": [], "meta": {"revision": revision}}


FLAGS = doc(
    flag("static-on"),
    flag("switched-off", {"name": "default"}, enabled=False),
    flag("alice-only", {"name": "userWithId", "parameters": {"userIds": "alice"}}),
    flag("half", {"name": "flexibleRollout",
                  "parameters": {"rollout": "50", "stickiness": "default", "groupId": "half"}}),
    flag("gold-plan", {"name": "default", "constraints": [
        {"contextName": "plan", "operator": "IN", "values": ["gold"]},
        {"contextName": "environment", "operator": "IN", "values": ["prod"]}]}),
    flag("colour", with_variant("blue", {"type": "string", "value": "#00f"})),
    flag("limit", with_variant("ten", {"type": "number", "value": "10"})),
    flag("ratio", with_variant("third", {"type": "number", "value": "0.33"})),
    flag("config", with_variant("cfg", {"type": "json", "value": '{"retries": 3, "tags": ["a"]}'})),
    flag("bad-json", with_variant("oops", {"type": "json", "value": "{not json"})),
    flag("json-scalar", with_variant("num", {"type": "json", "value": "7"})),
    flag("name-only", with_variant("plain", None)),
    flag("no-variants"),
    flag("broken", {"name": "flexibleRollout", "parameters": {"stickiness": "default"}}),
    flag("split", {"name": "default", "variants": [
        {"name": "a", "weight": 500, "stickiness": "default", "payload": {"type": "string", "value": "A"}},
        {"name": "b", "weight": 500, "stickiness": "default", "payload": {"type": "string", "value": "B"}}]}),
)


@pytest.fixture
def provider() -> TurnoutProvider:
    return TurnoutProvider(LocalFlags(FLAGS))


def ctx(key: str | None = None, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=key, attributes=attributes)


def test_metadata_name(provider: TurnoutProvider) -> None:
    assert provider.get_metadata().name == "turnout"


def test_boolean_reasons(provider: TurnoutProvider) -> None:
    on = provider.resolve_boolean_details("static-on", False)
    assert (on.value, on.reason, on.error_code, on.variant) == (True, Reason.STATIC, None, "on")
    off = provider.resolve_boolean_details("switched-off", True)
    assert (off.value, off.reason, off.error_code) == (False, Reason.DISABLED, None)
    hit = provider.resolve_boolean_details("alice-only", False, ctx("alice"))
    assert (hit.value, hit.reason) == (True, Reason.TARGETING_MATCH)
    miss = provider.resolve_boolean_details("alice-only", True, ctx("bob"))
    assert (miss.value, miss.reason, miss.error_code) == (False, Reason.DEFAULT, None)


def test_boolean_split_follows_the_unleash_bucket(provider: TurnoutProvider) -> None:
    users = [f"user-{i}" for i in range(40)]
    inside = [u for u in users if normalized_hash("half", u) <= 50]
    assert 0 < len(inside) < len(users)
    for user in users:
        got = provider.resolve_boolean_details("half", False, ctx(user))
        assert got.value is (user in inside)
        assert got.reason == (Reason.SPLIT if user in inside else Reason.DEFAULT)


def test_unknown_flag_gives_default_with_flag_not_found(provider: TurnoutProvider) -> None:
    for got, default in [
        (provider.resolve_boolean_details("nope", True), True),
        (provider.resolve_string_details("nope", "x"), "x"),
        (provider.resolve_integer_details("nope", 5), 5),
        (provider.resolve_float_details("nope", 1.5), 1.5),
        (provider.resolve_object_details("nope", {"k": 1}), {"k": 1}),
    ]:
        assert (got.value, got.reason, got.error_code) == (default, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
        assert got.error_message and "nope" in got.error_message


def test_malformed_flag_gives_default_with_parse_error(provider: TurnoutProvider) -> None:
    got = provider.resolve_boolean_details("broken", True)
    assert (got.value, got.reason, got.error_code) == (True, Reason.ERROR, ErrorCode.PARSE_ERROR)


def test_typed_payloads(provider: TurnoutProvider) -> None:
    text = provider.resolve_string_details("colour", "red")
    assert (text.value, text.variant, text.reason, text.error_code) == ("#00f", "blue", Reason.STATIC, None)
    number = provider.resolve_integer_details("limit", 0)
    assert (number.value, number.variant) == (10, "ten")
    assert isinstance(number.value, int)
    real = provider.resolve_float_details("ratio", 0.0)
    assert real.value == pytest.approx(0.33)
    whole = provider.resolve_float_details("limit", 0.0)
    assert (whole.value, whole.error_code) == (10.0, None)
    obj = provider.resolve_object_details("config", {})
    assert (obj.value, obj.variant) == ({"retries": 3, "tags": ["a"]}, "cfg")
    named = provider.resolve_string_details("name-only", "d")
    assert (named.value, named.variant) == ("plain", "plain")


@pytest.mark.parametrize(("kind", "key", "default"), [
    ("string", "limit", "d"), ("string", "config", "d"),
    ("integer", "colour", 1), ("integer", "ratio", 1), ("integer", "name-only", 1),
    ("float", "colour", 1.5), ("float", "config", 1.5),
    ("object", "colour", {"d": 1}), ("object", "json-scalar", {"d": 1}), ("object", "name-only", [1]),
])
def test_type_mismatch_gives_default(provider: TurnoutProvider, kind: str, key: str, default: Any) -> None:
    got = getattr(provider, f"resolve_{kind}_details")(key, default)
    assert (got.value, got.reason, got.error_code) == (default, Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    assert got.error_message


def test_invalid_json_payload_is_a_parse_error(provider: TurnoutProvider) -> None:
    got = provider.resolve_object_details("bad-json", {"d": 1})
    assert (got.value, got.error_code) == ({"d": 1}, ErrorCode.PARSE_ERROR)


def test_off_or_variantless_flag_gives_default_value_with_its_reason(provider: TurnoutProvider) -> None:
    off = provider.resolve_string_details("switched-off", "fallback")
    assert (off.value, off.reason, off.error_code) == ("fallback", Reason.DISABLED, None)
    plain = provider.resolve_string_details("no-variants", "fallback")
    assert (plain.value, plain.reason, plain.error_code) == ("fallback", Reason.DEFAULT, None)


def test_split_variants_are_sticky_per_targeting_key(provider: TurnoutProvider) -> None:
    seen = {provider.resolve_string_details("split", "", ctx(f"u{i}")).value for i in range(60)}
    assert seen == {"A", "B"}
    first = provider.resolve_string_details("split", "", ctx("u7"))
    assert first.reason == Reason.SPLIT
    assert all(provider.resolve_string_details("split", "", ctx("u7")).value == first.value
               for _ in range(10))


def test_context_mapping() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    mapped = unleash_context(ctx("alice", sessionId="s1", remoteAddress="10.0.0.1", environment="prod",
                                 appName="shop", currentTime=when, plan="gold", beta=True,
                                 properties={"region": "eu"}))
    assert mapped == {"userId": "alice", "sessionId": "s1", "remoteAddress": "10.0.0.1",
                      "environment": "prod", "appName": "shop", "currentTime": when,
                      "properties": {"plan": "gold", "beta": True, "region": "eu"}}
    assert unleash_context(None) == {}
    assert unleash_context(ctx(userId="bob")) == {"userId": "bob"}


def test_context_fields_and_properties_reach_constraints(provider: TurnoutProvider) -> None:
    def on(plan: str, environment: str) -> bool:
        return provider.resolve_boolean_details(
            "gold-plan", False, ctx("a", plan=plan, environment=environment)).value

    assert on("gold", "prod")
    assert not on("gold", "dev")
    assert not on("free", "prod")


class Events:
    """Provider events as the SDK's handlers see them (they run on the SDK's thread pool)."""

    def __init__(self) -> None:
        self.seen: list[tuple[ProviderEvent, EventDetails]] = []
        self.cond = threading.Condition()

    def __call__(self, event: ProviderEvent, details: EventDetails) -> None:
        if details.provider_name == "turnout":
            with self.cond:
                self.seen.append((event, details))
                self.cond.notify_all()

    def wait(self, event: ProviderEvent, count: int = 1, timeout: float = 2.0) -> EventDetails:
        """The ``count``-th event of kind ``event``, waiting for it if need be."""
        def found() -> list[EventDetails]:
            return [d for e, d in self.seen if e is event]

        with self.cond:
            assert self.cond.wait_for(lambda: len(found()) >= count, timeout), (event, self.seen)
            return found()[count - 1]


@pytest.fixture
def events() -> Iterator[Events]:
    seen = Events()
    handlers = {}
    for event in ProviderEvent:
        def handler(details: EventDetails, event: ProviderEvent = event) -> None:
            seen(event, details)
        handlers[event] = handler
        api.add_handler(event, handler)
    yield seen
    for event, handler in handlers.items():
        api.remove_handler(event, handler)
    api.clear_providers()


def test_events_through_the_sdk(events: Events) -> None:
    source = LocalFlags(doc(flag("a"), flag("b"), revision=1))
    provider = TurnoutProvider(source)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.READY
    assert client.get_boolean_value("a", False) is True
    events.wait(ProviderEvent.PROVIDER_READY)

    source.set(doc(flag("a", enabled=False), flag("b"), flag("c"), revision=2))
    details = events.wait(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)
    assert details.flags_changed == ["a", "c"]
    assert details.metadata == {"revision": 2}
    details_a = client.get_boolean_details("a", True)
    assert (details_a.value, details_a.reason) == (False, Reason.DISABLED)

    source.mark_stale("server gone")
    assert events.wait(ProviderEvent.PROVIDER_STALE).message == "server gone"
    assert client.get_provider_status() is ProviderStatus.STALE
    assert client.get_boolean_value("b", False) is True  # stale flags still answer

    source.set(doc(flag("a", enabled=False), flag("b"), flag("c"), revision=2))
    events.wait(ProviderEvent.PROVIDER_READY, count=2)
    assert client.get_provider_status() is ProviderStatus.READY
    assert len([e for e, _ in events.seen if e is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED]) == 1


def test_initialize_without_state_fails_and_emits_error(events: Events) -> None:
    source = LocalFlags()
    provider = TurnoutProvider(source, init_timeout=0.05)
    api.set_provider(provider)
    error = events.wait(ProviderEvent.PROVIDER_ERROR)
    assert error.error_code == ErrorCode.PROVIDER_NOT_READY
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.ERROR
    source.set(doc(flag("late")))
    events.wait(ProviderEvent.PROVIDER_READY)
    assert client.get_provider_status() is ProviderStatus.READY
    assert client.get_boolean_value("late", False) is True


def test_stale_source_at_start_reports_stale_after_ready(events: Events) -> None:
    source = LocalFlags(doc(flag("cached")))
    source.mark_stale("serving cached flags")
    api.set_provider_and_wait(TurnoutProvider(source))
    events.wait(ProviderEvent.PROVIDER_STALE)
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.STALE
    assert client.get_boolean_value("cached", False) is True


def test_shutdown_closes_the_source() -> None:
    source = LocalFlags(doc(flag("a")))
    provider = TurnoutProvider(source)
    provider.initialize(EvaluationContext())
    provider.shutdown()
    assert source.status == "CLOSED"


def test_segment_change_names_the_flags_that_use_it() -> None:
    def state(values: list[str]) -> dict[str, Any]:
        segment = {"id": 7, "name": "beta", "constraints": [
            {"contextName": "userId", "operator": "IN", "values": values}]}
        return {"version": 2, "segments": [segment], "features": [
            flag("uses-segment", {"name": "default", "segments": [7]}), flag("other")]}

    source = LocalFlags(state(["a"]))
    provider = TurnoutProvider(source)
    changed: list[Any] = []
    source.add_listener(lambda notice: changed.append(notice.flags_changed))
    assert not provider.resolve_boolean_details("uses-segment", False, ctx("b")).value
    source.set(state(["a", "b"]))
    assert changed == [("uses-segment",)]
    assert provider.resolve_boolean_details("uses-segment", False, ctx("b")).value
