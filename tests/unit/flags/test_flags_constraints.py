"""Constraint operators: operands, inversion, case folding and junk values."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.flags.constraints import DefinitionError, compile_constraint
from turnout.flags.semver import semver_key


def check(constraint: dict[str, Any], context: dict[str, Any]) -> bool:
    return compile_constraint(constraint)(context)


def prop(value: Any) -> dict[str, Any]:
    return {"properties": {"field": value}}


def test_in_is_case_sensitive_and_not_in_holds_for_missing_fields() -> None:
    c = {"contextName": "field", "operator": "IN", "values": ["Gold"]}
    assert check(c, prop("Gold")) and not check(c, prop("gold"))
    assert check({**c, "operator": "NOT_IN"}, {})
    assert not check({**c, "operator": "NOT_IN", "inverted": True}, {})


def test_string_operators_fold_case_on_request_and_read_values_only() -> None:
    c = {"contextName": "field", "operator": "STR_CONTAINS", "values": ["Mid"],
         "caseInsensitive": True}
    assert check(c, prop("aMIDb"))
    assert not check({**c, "caseInsensitive": False}, prop("aMIDb"))
    # the official engine reads `values` only: a singular `value` is not an operand
    both = {"contextName": "field", "operator": "STR_ENDS_WITH", "value": ".io", "values": [".dev"]}
    assert check(both, prop("x.dev")) and not check(both, prop("x.io"))
    with pytest.raises(DefinitionError, match="values"):
        compile_constraint({"contextName": "field", "operator": "STR_ENDS_WITH", "value": ".io"})


def test_scalar_operators_read_value_only() -> None:
    c = {"contextName": "field", "operator": "NUM_EQ", "value": "5", "values": ["6"]}
    assert check(c, prop("5")) and not check(c, prop("6"))
    with pytest.raises(DefinitionError, match="value"):
        compile_constraint({"contextName": "field", "operator": "NUM_EQ", "values": ["5"]})


def test_numbers_compare_as_floats_and_junk_context_does_not_match() -> None:
    c = {"contextName": "field", "operator": "NUM_GTE", "value": "2.5"}
    assert check(c, prop("2.50")) and check(c, prop(3)) and not check(c, prop("2"))
    assert not check(c, prop("many")) and not check(c, prop(None))
    assert check({**c, "inverted": True}, prop("many"))
    # what Python reads but Rust's f64 parser does not
    for lenient in (" 6", "6 ", "1_000", "6\n"):
        assert not check(c, prop(lenient)), lenient
    assert check(c, prop("+6")) and check(c, prop("6.")) and check(c, prop("1e3")) and check(c, prop("inf"))


def test_num_eq_is_within_machine_epsilon_like_the_official_engine() -> None:
    c = {"contextName": "field", "operator": "NUM_EQ", "value": "0.3"}
    assert check(c, prop("0.30000000000000004"))  # 0.1 + 0.2
    assert not check(c, prop("0.3000000000000005"))
    assert not check({**c, "value": "0"}, prop("nan"))


def test_dates_need_an_offset_and_compare_as_instants() -> None:
    c = {"contextName": "field", "operator": "DATE_AFTER", "value": "2030-01-01T00:00:00Z"}
    assert check(c, prop("2030-01-01T00:00:00.001Z")) and check(c, prop("2030-01-01T01:00:01+01:00"))
    assert not check(c, prop("2030-01-01T01:00:00+01:00"))
    for refused in ("2031-01-01T00:00:00", "2031-01-01", "2031-13-01T00:00:00Z"):
        assert not check(c, prop(refused)), refused
    # chrono's relaxed RFC 3339: a space for T, one-digit fields, UTC and +HHMM are read
    for relaxed in ("2031-01-01 00:00:00Z", "2031-1-1T0:0:0Z", "2031-01-01T00:00:00 UTC",
                    "2031-01-01T00:00:00+0100"):
        assert check(c, prop(relaxed)), relaxed


def test_addresses_are_read_strictly() -> None:
    c = {"contextName": "remoteAddress", "operator": "IN_CIDR", "values": ["10.0.0.0/8"]}
    assert check(c, {"remoteAddress": "10.1.2.3"})
    for refused in (" 10.1.2.3", "10.1.2.3 ", "010.1.2.3", "10.1.2.3/32"):
        assert not check(c, {"remoteAddress": refused}), refused
    v6 = {**c, "values": ["fe80::/10"]}
    assert check(v6, {"remoteAddress": "fe80::1"}) and not check(v6, {"remoteAddress": "fe80::1%eth0"})


@pytest.mark.parametrize(("low", "high"), [
    ("1.0.0-alpha", "1.0.0-alpha.1"), ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
    ("1.0.0-beta.2", "1.0.0-beta.11"), ("1.0.0-rc.1", "1.0.0"), ("1.9.9", "1.10.0"),
])
def test_semver_precedence_follows_the_standard(low: str, high: str) -> None:
    low_key, high_key = semver_key(low), semver_key(high)
    assert low_key is not None and high_key is not None and low_key < high_key


def test_semver_ignores_build_metadata_and_rejects_loose_forms() -> None:
    assert semver_key("1.2.3+build.5") == semver_key("1.2.3")
    for loose in ("v1.2.3", "1.2", "01.2.3", "1.2.3-", " 1.2.3"):
        assert semver_key(loose) is None


def test_regex_is_re2_with_case_option() -> None:
    c = {"contextName": "field", "operator": "REGEX", "value": "^[[:digit:]]+$"}
    assert check(c, prop("123")) and not check(c, prop("12a"))
    folded = {"contextName": "field", "operator": "REGEX", "value": "^ab$",
              "caseInsensitive": True}
    assert check(folded, prop("AB"))


def test_cidr_ignores_bad_entries_and_mismatched_families() -> None:
    c = {"contextName": "remoteAddress", "operator": "IN_CIDR",
         "values": ["nope", "10.0.0.0/8"]}
    assert check(c, {"remoteAddress": "10.9.9.9"})
    assert not check(c, {"remoteAddress": "::ffff:1"}) and not check(c, {"remoteAddress": "x"})


@pytest.mark.parametrize("constraint", [
    {"contextName": "f", "operator": "NOT_AN_OPERATOR", "value": "1"},
    {"contextName": "f", "operator": "DATE_AFTER", "value": "yesterday"},
    {"contextName": "f", "operator": "SEMVER_EQ", "value": "v1"},
    {"contextName": "f", "operator": "REGEX", "value": "(a)\\1"},
    {"contextName": "f", "operator": "IN_CIDR", "values": ["999.0.0.0/8"]},
    {"contextName": "f", "operator": "IN", "values": "a,b"},
    {"operator": "IN", "values": []},
    "IN",
])
def test_malformed_constraints_are_rejected_at_compile_time(constraint: Any) -> None:
    with pytest.raises(DefinitionError):
        compile_constraint(constraint)


def test_top_level_field_wins_over_properties() -> None:
    c = {"contextName": "environment", "operator": "IN", "values": ["prod"]}
    assert check(c, {"environment": "prod", "properties": {"environment": "dev"}})
    assert check(c, {"properties": {"environment": "prod"}})
    assert not check(c, {"properties": ["junk"]})
