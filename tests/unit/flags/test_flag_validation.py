"""Flag definitions as people write them: every kind of mistake named by its field path."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.errors import UserError
from turnout.flags import FlagState, evaluate
from turnout.flags.definition import FlagError, validate_flag, validate_segment


def flag(**fields: Any) -> dict[str, Any]:
    return {"name": "checkout", "enabled": True, **fields}


def strategy(name: str = "default", **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


def constraint(operator: str, **fields: Any) -> dict[str, Any]:
    return {"contextName": "appVersion", "operator": operator, **fields}


def with_constraint(c: dict[str, Any]) -> dict[str, Any]:
    return flag(strategies=[strategy(constraints=[c])])


C0 = "strategies.0.constraints.0"

# (id, definition, the field path a problem must name, a word the message must hold)
INVALID: list[tuple[str, object, str, str]] = [
    ("not-an-object", ["checkout"], "(flag)", "object"),
    ("name-missing", {"enabled": True}, "name", "required"),
    ("name-bad-chars", flag(name="check out!"), "name", "letters"),
    ("name-too-long", flag(name="x" * 101), "name", "100"),
    ("enabled-not-bool", flag(enabled="maybe"), "enabled", "boolean"),
    ("unknown-field", flag(enabeld=True), "enabeld", "unknown field"),
    ("flag-type", flag(type="forever"), "type", "release"),
    ("strategy-unknown", flag(strategies=[strategy("bogus")]), "strategies.0.name", "flexibleRollout"),
    ("strategies-not-list", flag(strategies="default"), "strategies", "list"),
    ("rollout-missing", flag(strategies=[strategy("flexibleRollout")]),
     "strategies.0.parameters.rollout", "required"),
    ("rollout-over-100", flag(strategies=[strategy("flexibleRollout", parameters={"rollout": 150})]),
     "strategies.0.parameters.rollout", "0..100"),
    ("rollout-not-number", flag(strategies=[strategy("flexibleRollout", parameters={"rollout": "half"})]),
     "strategies.0.parameters.rollout", "0..100"),
    ("rollout-fraction", flag(strategies=[strategy("flexibleRollout", parameters={"rollout": 12.5})]),
     "strategies.0.parameters.rollout", "whole"),
    ("percentage-negative", flag(strategies=[strategy("gradualRolloutUserId",
                                                      parameters={"percentage": "-1"})]),
     "strategies.0.parameters.percentage", "0..100"),
    ("stickiness-empty", flag(strategies=[strategy("flexibleRollout",
                                                   parameters={"rollout": 5, "stickiness": " "})]),
     "strategies.0.parameters.stickiness", "empty"),
    ("user-ids-empty", flag(strategies=[strategy("userWithId", parameters={"userIds": " , "})]),
     "strategies.0.parameters.userIds", "at least one"),
    ("ips-invalid", flag(strategies=[strategy("remoteAddress", parameters={"IPs": "10.0.0.1, router"})]),
     "strategies.0.parameters.IPs", "'router'"),
    ("ips-leading-zero", flag(strategies=[strategy("remoteAddress", parameters={"IPs": "010.0.0.1"})]),
     "strategies.0.parameters.IPs", "'010.0.0.1'"),
    ("parameter-bool", flag(strategies=[strategy(parameters={"groupId": True})]),
     "strategies.0.parameters.groupId", "string"),
    ("operator-unknown", with_constraint(constraint("LIKE", values=["a"])), f"{C0}.operator", "LIKE"),
    ("context-name-empty", with_constraint({"contextName": "", "operator": "IN", "values": ["a"]}),
     f"{C0}.contextName", "at least 1"),
    ("in-without-values", with_constraint(constraint("IN")), f"{C0}.values", "at least one"),
    ("num-not-number", with_constraint(constraint("NUM_GT", value="ten")), f"{C0}.value", "number"),
    ("num-missing-value", with_constraint(constraint("NUM_LT")), f"{C0}.value", "needs one"),
    ("date-not-date", with_constraint(constraint("DATE_AFTER", value="next week")),
     f"{C0}.value", "offset"),
    ("date-without-zone", with_constraint(constraint("DATE_AFTER", value="2030-01-01T00:00:00")),
     f"{C0}.value", "offset"),
    ("date-microseconds", with_constraint(constraint("DATE_BEFORE",
                                                     value="2030-01-01T00:00:00.123456Z")),
     f"{C0}.value", "milliseconds"),
    ("date-space-for-t", with_constraint(constraint("DATE_BEFORE", value="2030-01-01 00:00:00Z")),
     f"{C0}.value", "2030-01-31T12:00:00Z"),
    ("num-underscore", with_constraint(constraint("NUM_EQ", value="1_000")), f"{C0}.value", "'_'"),
    ("num-leading-dot", with_constraint(constraint("NUM_GT", value=".5")), f"{C0}.value", "number"),
    ("num-infinity", with_constraint(constraint("NUM_LT", value="inf")), f"{C0}.value", "inf"),
    ("num-in-values", with_constraint(constraint("NUM_EQ", values=["5"])), f"{C0}.values",
     "ignore 'values'"),
    ("num-both", with_constraint(constraint("NUM_EQ", value="5", values=["6"])), f"{C0}.values",
     "reads one value"),
    ("regex-in-values", with_constraint(constraint("REGEX", values=["^a"])), f"{C0}.values",
     "ignore 'values'"),
    ("regex-trailing-backslash", with_constraint(constraint("REGEX", value="a\\\\")),
     f"{C0}.value", "backslash"),
    ("semver-leading-zero", with_constraint(constraint("SEMVER_EQ", value="01.2.3")), f"{C0}.value",
     "semantic"),
    ("semver-pre-leading-zero", with_constraint(constraint("SEMVER_EQ", value="1.2.3-01")),
     f"{C0}.value", "semantic"),
    ("semver-over-u64", with_constraint(constraint("SEMVER_LT", value="18446744073709551616.0.0")),
     f"{C0}.value", "semantic"),
    ("contains-with-value", with_constraint(constraint("STR_CONTAINS", value="beta")),
     f"{C0}.value", "values: ['beta']"),
    ("starts-with-value", with_constraint(constraint("STR_STARTS_WITH", value="beta")),
     f"{C0}.value", "ignore 'value'"),
    ("ends-with-value", with_constraint(constraint("STR_ENDS_WITH", value=".io", values=["x"])),
     f"{C0}.value", "reads a list"),
    ("in-with-value", with_constraint(constraint("IN", value="eu")), f"{C0}.value", "reads a list"),
    ("not-in-with-value", with_constraint(constraint("NOT_IN", value="eu")), f"{C0}.value",
     "reads a list"),
    ("cidr-with-value", with_constraint(constraint("IN_CIDR", value="10.0.0.0/8")), f"{C0}.value",
     "reads a list"),
    ("cidr-with-space", with_constraint(constraint("IN_CIDR", values=[" 10.0.0.0/8"])),
     f"{C0}.values.0", "no spaces"),
    ("in-trailing-backslash", with_constraint(constraint("IN", values=["ok", "c:\\"])),
     f"{C0}.values.1", "backslash"),
    ("context-name-quote", with_constraint({"contextName": 'say "hi"', "operator": "IN",
                                            "values": ["a"]}), f"{C0}.contextName", "'\"'"),
    ("group-id-quote", flag(strategies=[strategy("flexibleRollout",
                                                 parameters={"rollout": 5, "groupId": 'a"b'})]),
     "strategies.0.parameters.groupId", "'\"'"),
    ("stickiness-backslash", flag(strategies=[strategy("flexibleRollout",
                                                       parameters={"rollout": 5, "stickiness": "a\\"})]),
     "strategies.0.parameters.stickiness", "cannot hold"),
    ("user-id-backslash", flag(strategies=[strategy("userWithId", parameters={"userIds": "a,b\\"})]),
     "strategies.0.parameters.userIds", "backslash"),
    ("semver-not-strict", with_constraint(constraint("SEMVER_GT", value="v1.2")), f"{C0}.value", "semantic"),
    ("regex-invalid", with_constraint(constraint("REGEX", value="(unclosed")), f"{C0}.value", "RE2"),
    ("regex-backreference", with_constraint(constraint("REGEX", value=r"(a)\1")), f"{C0}.value", "RE2"),
    ("cidr-invalid", with_constraint(constraint("IN_CIDR", values=["10.0.0.0/8", "10.0.0.0/33"])),
     f"{C0}.values.1", "CIDR"),
    ("inverted-not-bool", with_constraint(constraint("IN", values=["a"], inverted="yes")),
     f"{C0}.inverted", "boolean"),
    ("segment-id-not-int", flag(strategies=[strategy(segments=["beta"])]),
     "strategies.0.segments.0", "integer"),
    ("variant-weight-high", flag(variants=[{"name": "a", "weight": 1001}]), "variants.0.weight", "1000"),
    ("variant-weight-type", flag(variants=[{"name": "a", "weight": 10, "weightType": "fixed"}]),
     "variants.0.weightType", "fix"),
    ("variant-name-twice", flag(variants=[{"name": "a"}, {"name": "a"}]), "variants.1.name", "twice"),
    ("variant-fixed-total", flag(variants=[{"name": "a", "weight": 300, "weightType": "fix"}]),
     "variants", "1000"),
    ("variant-fixed-over", flag(variants=[{"name": "a", "weight": 700, "weightType": "fix"},
                                          {"name": "b", "weight": 700, "weightType": "fix"}, {"name": "c"}]),
     "variants", "more than"),
    ("payload-type", flag(variants=[{"name": "a", "payload": {"type": "xml", "value": "<a/>"}}]),
     "variants.0.payload.type", "json"),
    ("payload-bad-json", flag(variants=[{"name": "a", "payload": {"type": "json", "value": "{oops"}}]),
     "variants.0.payload.value", "JSON"),
    ("payload-bad-number", flag(variants=[{"name": "a", "payload": {"type": "number", "value": "many"}}]),
     "variants.0.payload.value", "number"),
    ("override-no-values", flag(variants=[{"name": "a", "overrides": [{"contextName": "userId",
                                                                       "values": []}]}]),
     "variants.0.overrides.0.values", "at least 1"),
    ("strategy-variant-weight", flag(strategies=[strategy(variants=[{"name": "a", "weight": -5}])]),
     "strategies.0.variants.0.weight", "greater than"),
    ("dependency-self", flag(dependencies=[{"feature": "checkout"}]), "dependencies.0.feature", "itself"),
    ("dependency-name", flag(dependencies=[{"feature": "no spaces"}]), "dependencies.0.feature", "letters"),
]


@pytest.mark.parametrize(("definition", "path", "word"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_flag_names_its_field(definition: object, path: str, word: str) -> None:
    with pytest.raises(FlagError) as caught:
        validate_flag(definition)
    matching = [p for p in caught.value.problems if p.startswith(f"{path}: ")]
    assert matching, caught.value.problems
    assert any(word in p for p in matching), caught.value.problems


def test_there_are_many_distinct_kinds_of_invalid_flag() -> None:
    assert len({case[2] for case in INVALID}) >= 15


def test_every_problem_is_listed_not_only_the_first() -> None:
    bad = flag(enabled="x", strategies=[
        strategy("flexibleRollout", parameters={"rollout": 101}),
        strategy(constraints=[constraint("REGEX", value="(")]),
        strategy("nope"),
    ])
    with pytest.raises(FlagError) as caught:
        validate_flag(bad)
    paths = {p.split(": ")[0] for p in caught.value.problems}
    assert paths == {"enabled", "strategies.0.parameters.rollout",
                     "strategies.1.constraints.0.value", "strategies.2.name"}


def test_flag_error_is_a_user_error_with_exit_2() -> None:
    with pytest.raises(UserError) as caught:
        validate_flag({"name": ""})
    assert caught.value.exit_code == 2


def test_valid_flag_is_normalised_as_unleash_serves_it() -> None:
    out = validate_flag({
        "name": "checkout", "enabled": True,
        "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": 25}},
            {"name": "userWithId", "parameters": {"userIds": " alice, bob ,"}},
            {"name": "default", "constraints": [{"contextName": "build", "operator": "NUM_GTE",
                                                 "value": 42}]},
            {"name": "gradualRolloutUserId", "parameters": {"percentage": "10"}},
        ],
        "variants": [{"name": "blue", "weight": 200, "weightType": "fix"},
                     {"name": "green"}, {"name": "red"}],
    })
    assert out["type"] == "release" and out["stale"] is False and out["dependencies"] == []
    assert out["strategies"][0]["parameters"] == {"rollout": "25", "stickiness": "default",
                                                  "groupId": "checkout"}
    assert out["strategies"][1]["parameters"]["userIds"] == "alice,bob"
    assert out["strategies"][2]["constraints"][0]["value"] == "42"
    # without a group the official SDKs never turn gradualRolloutUserId on: the flag's name it is
    assert out["strategies"][3]["parameters"] == {"percentage": "10", "groupId": "checkout"}
    assert [v["weight"] for v in out["variants"]] == [200, 400, 400]
    assert validate_flag(out) == out  # normalising twice changes nothing


def test_normalised_flag_evaluates_as_written() -> None:
    out = validate_flag(flag(strategies=[
        {"name": "userWithId", "parameters": {"userIds": "alice"}},
        {"name": "default", "constraints": [{"contextName": "appVersion", "operator": "SEMVER_GTE",
                                             "value": "2.0.0"}]},
    ]))
    state = FlagState.from_json({"features": [out]})
    assert evaluate(state, "checkout", {"userId": "alice"}).enabled
    assert evaluate(state, "checkout", {"appVersion": "2.1.0"}).enabled
    assert not evaluate(state, "checkout", {"userId": "bob", "appVersion": "1.9.9"}).enabled


def test_segment_validation() -> None:
    ok = validate_segment({"name": "beta", "constraints": [
        {"contextName": "region", "operator": "IN", "values": ["eu"]}]})
    assert "id" not in ok and ok["constraints"][0]["values"] == ["eu"]
    with pytest.raises(FlagError) as caught:
        validate_segment({"id": 0, "name": "", "constraints": [constraint("NUM_EQ", value="x")]})
    paths = {p.split(": ")[0] for p in caught.value.problems}
    assert paths == {"id", "name", "constraints.0.value"}
    with pytest.raises(FlagError, match=r"constraints\.0\.value: STR_CONTAINS reads a list"):
        validate_segment({"name": "beta", "constraints": [constraint("STR_CONTAINS", value="b")]})


@pytest.mark.parametrize("c", [
    constraint("NUM_GT", value=" 6 "),  # spaces around an operand: the rule grammar skips them
    constraint("NUM_EQ", value="+1.5E3", values=[]),
    constraint("NUM_LT", value="5."),
    constraint("DATE_AFTER", value="2030-01-31T12:00:00.250+01:00"),
    constraint("DATE_AFTER", value="2016-12-31T23:59:60Z"),  # a leap second
    constraint("SEMVER_GTE", value="1.2.3-rc.1+build.007"),
    constraint("STR_CONTAINS", values=['say "hi"', "a\\b"], value=""),
    constraint("IN_CIDR", values=["10.0.0.0/255.0.0.0", "::ffff:0:0/96"]),
])
def test_definitions_the_official_sdks_read_the_same_are_accepted(c: dict[str, Any]) -> None:
    validate_flag(with_constraint(c))
