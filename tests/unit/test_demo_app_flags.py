"""The demo app evaluating its feature itself (an injected evaluator, no network), its cohort
metrics, and the DEMO_FLAGS_* settings."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from turnout.demo.app import flag_source
from turnout.demo.app_answers import Behaviour, DemoApp, Request
from turnout.flags.local import LocalFlags
from turnout.routers.base import LATENCY_BOUNDS


class Users:
    """An evaluator that says `on` for the listed users, and keeps what it was asked."""

    def __init__(self, *users: str) -> None:
        self.users = set(users)
        self.asked: list[tuple[str, dict[str, str]]] = []

    def is_enabled(self, name: str, context: Mapping[str, str] | None = None, /) -> bool:
        self.asked.append((name, dict(context or {})))
        return (context or {}).get("userId") in self.users


def get(user: str | None, path: bytes = b"/", flags: str = "") -> Request:
    return Request("GET", path, user, 0, True, flags)


def samples(app: DemoApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, by name and sorted labels."""
    answer = app.answer(get(None, b"/metrics"))
    out = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def count(app: DemoApp, cohort: str, code: str, flag: str = "f") -> float:
    key = ("demo_feature_requests_total", (("code", code), ("cohort", cohort), ("flag", flag)))
    return samples(app).get(key, 0.0)


def test_the_new_path_is_taken_exactly_for_the_users_the_evaluator_says_on() -> None:
    flags = Users("u1", "u2")
    app = DemoApp(Behaviour("v2", feature="f"), flags=flags)
    versions = {u: app.answer(get(u)).version for u in ("u1", "u2", "u3", "u9")}
    assert versions == {"u1": b"v2+f", "u2": b"v2+f", "u3": b"", "u9": b""}  # b"": the process's own
    assert app.answer(get(None)).version == b""
    assert flags.asked[0] == ("f", {"userId": "u1"})
    assert flags.asked[-1] == ("f", {})  # no X-User-Id: no userId
    rendered = app.render(get("u1"), app.answer(get("u1")), close=False)
    assert b"X-Version: v2+f\r\n" in rendered


def test_the_header_is_ignored_when_an_evaluator_is_given() -> None:
    app = DemoApp(Behaviour("v2", feature="f"), flags=Users("u1"))
    assert app.answer(get("u9", flags="f=on")).version == b""
    assert app.answer(get("u1", flags="f=off")).version == b"v2+f"
    by_header = DemoApp(Behaviour("v2", feature="f"))  # without one, the header still decides
    assert by_header.answer(get("u9", flags="f=on")).version == b"v2+f"
    assert by_header.answer(get("u1")).version == b""


def test_a_real_local_flag_state_decides_by_user_id() -> None:
    doc = {"version": 2, "features": [{"name": "f", "enabled": True, "strategies": [
        {"name": "userWithId", "parameters": {"userIds": "u1,u2"}}]}]}
    app = DemoApp(Behaviour("v2", feature="f"), flags=LocalFlags(doc))
    assert [app.answer(get(u)).version for u in ("u1", "u2", "u9")] == [b"v2+f", b"v2+f", b""]
    unknown = DemoApp(Behaviour("v2", feature="g"), flags=LocalFlags(doc))
    assert unknown.answer(get("u1")).version == b""  # an unknown flag is off


def test_cohorts_are_counted_with_flag_cohort_and_code_but_not_health_or_metrics() -> None:
    app = DemoApp(Behaviour("v2", feature="f"), flags=Users("u1"))
    for user in ("u1", "u1", "u9", "u8", "u7"):
        assert app.answer(get(user)).status == 200
    assert app.answer(get("u1", b"/slow?ms=x")).status == 400
    app.answer(get("u1", b"/healthz"))
    app.answer(get("u9", b"/metrics"))
    assert count(app, "on", "200") == 2
    assert count(app, "off", "200") == 3
    assert count(app, "on", "400") == 1
    got = samples(app)
    assert sum(v for (name, _), v in got.items() if name == "demo_feature_requests_total") == 6
    assert sum(v for (name, _), v in got.items() if name == "demo_requests_total") == 6
    on_count = ("demo_feature_request_seconds_count", (("cohort", "on"), ("flag", "f")))
    assert got[on_count] == 3
    buckets = [float(dict(k[1])["le"]) for k in got if k[0] == "demo_feature_request_seconds_bucket"
               and dict(k[1])["cohort"] == "off"]
    assert buckets[:-1] == [float(b) for b in LATENCY_BOUNDS] and buckets[-1] == float("inf")


def test_cohort_time_is_the_time_the_app_adds() -> None:
    app = DemoApp(Behaviour("v2", feature="f"), flags=Users("u1"))
    assert app.answer(get("u1", b"/slow?ms=300")).delay_s == pytest.approx(0.3)
    app.answer(get("u9"))
    got = samples(app)
    assert got["demo_feature_request_seconds_sum", (("cohort", "on"), ("flag", "f"))] == pytest.approx(0.3)
    assert got["demo_feature_request_seconds_sum", (("cohort", "off"), ("flag", "f"))] == pytest.approx(0.0)


def test_a_broken_new_path_shows_as_500s_on_cohort_on_only() -> None:
    env = {"TURNOUT_VERSION": "v2", "DEMO_FEATURE": "f", "DEMO_FEATURE_FAIL": "errors"}
    behaviour = Behaviour.from_env(env)
    app = DemoApp(behaviour, flags=Users("u1", "u2"))
    statuses = [app.answer(get(u)).status for u in ("u1", "u2", "u9", "u8", "u7")]
    assert statuses == [500, 500, 200, 200, 200]
    assert (count(app, "on", "500"), count(app, "on", "200")) == (2, 0)
    assert (count(app, "off", "500"), count(app, "off", "200")) == (0, 3)


def test_cohorts_are_counted_when_the_router_decides_too() -> None:
    app = DemoApp(Behaviour("v2", feature="f"))
    app.answer(get("u1", flags="g=on, f=on"))
    app.answer(get("u2", flags="f=off"))
    assert (count(app, "on", "200"), count(app, "off", "200")) == (1, 1)


def test_no_cohort_series_without_a_feature() -> None:
    app = DemoApp(Behaviour("v2"), flags=Users("u1"))
    assert app.answer(get("u1")).version == b""
    body = app.answer(get(None, b"/metrics")).body
    assert b"demo_requests_total{" in body  # the request was counted...
    assert b"demo_feature" not in body  # ...but in no cohort


@pytest.mark.parametrize(("env", "named"), [
    ({"DEMO_FLAGS_URL": "ftp://h:1"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "localhost:4242"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "http://h:99999"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "http://"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "http://h:1/?x=1"}, "DEMO_FLAGS_URL"),
    ({"DEMO_FLAGS_URL": "http://h:1", "DEMO_FLAGS_TOKEN": "t"}, "DEMO_FEATURE"),
    ({"DEMO_FLAGS_URL": "http://h:1", "DEMO_FEATURE": "f"}, "DEMO_FLAGS_TOKEN"),
    ({"DEMO_FLAGS_TOKEN": "t", "DEMO_FEATURE": "f"}, "DEMO_FLAGS_URL"),
])
def test_a_bad_flag_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        flag_source(env, env.get("DEMO_FEATURE", ""))


def test_flag_settings_are_read() -> None:
    env = {"DEMO_FLAGS_URL": " https://flags.example:8443/base ", "DEMO_FLAGS_TOKEN": " tok "}
    assert flag_source(env, "f") == ("https://flags.example:8443/base", "tok")
    assert flag_source({}, "f") is None
    assert flag_source({"DEMO_FLAGS_URL": " "}, "") is None
