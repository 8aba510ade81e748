"""The readers of `turnout.flags.values`, as tables of what the official engine accepts.

Every row was checked against the installed yggdrasil engine (through the official Python
SDK in `tests/e2e/test_sdk_context_values.py`); these tables keep the readers honest
without it.
"""

from __future__ import annotations

import math

import pytest

from turnout.flags.semver import semver_key, semver_operand
from turnout.flags.values import (
    date_operand,
    number_operand,
    parse_address,
    parse_instant,
    parse_network,
    parse_number,
    survives_quoting,
)

NUMBERS = [("6", 6.0), ("+6", 6.0), ("-6", -6.0), ("6.", 6.0), (".6", 0.6), ("+.6", 0.6),
           ("1e3", 1000.0), ("1E+3", 1000.0), ("1e-3", 0.001), ("inf", math.inf),
           ("-Infinity", -math.inf), ("1e400", math.inf)]
NOT_NUMBERS = [" 6", "6 ", "\t6", "6\n", "1_000", "1,000", "0x10", "", ".", "1e", "e3", "infin",
               "\u0666"]


@pytest.mark.parametrize(("text", "number"), NUMBERS)
def test_numbers_rust_reads(text: str, number: float) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_numbers_rust_refuses(text: str) -> None:
    assert parse_number(text) is None


def test_nan_is_a_number_that_compares_false() -> None:
    found = parse_number("NaN")
    assert found is not None and math.isnan(found)


def test_number_operands_follow_the_rule_grammar() -> None:
    assert number_operand(" 6 ") == 6.0 and number_operand("5.") == 5.0
    for refused in (".5", "inf", "nan", "1_000", "6\n", "5 or true"):
        assert number_operand(refused) is None, refused


BASE = parse_instant("2024-01-01T00:00:00Z")
SAME_INSTANT = ["2024-01-01T00:00:00Z", "2024-01-01t00:00:00z", "2024-01-01 00:00:00Z",
                "2024-1-1T0:0:0Z", "2024-01-01T00:00:00 UTC", "2024-01-01T00:00:00utc",
                "2024-01-01T01:00:00+01:00", "2024-01-01T01:00:00+0100", "2023-12-31T19:00:00\u221205:00",
                " 2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z ", "+2024-01-01T00:00:00Z",
                "2024-01-01T00:00:00.000000000000Z"]
NOT_DATES = ["2024-01-01T00:00:00", "2024-01-01", "2024-01-01T00:00Z", "2024-02-30T00:00:00Z",
             "2024-01-01T24:00:00Z", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+02:60",
             "2024-01-01T00:00:00.Z", "20240-01-01T00:00:00Z", "2024-01-01T00:00:00Z junk"]


@pytest.mark.parametrize("text", SAME_INSTANT)
def test_relaxed_rfc3339_dates_chrono_reads(text: str) -> None:
    assert parse_instant(text) == BASE


@pytest.mark.parametrize("text", NOT_DATES)
def test_dates_chrono_refuses(text: str) -> None:
    assert parse_instant(text) is None


def test_fractions_and_leap_seconds_order_like_chrono() -> None:
    leap = parse_instant("2016-12-31T23:59:60.5Z")
    before, after = parse_instant("2016-12-31T23:59:59.999999999Z"), parse_instant("2017-01-01T00:00:00Z")
    assert before is not None and leap is not None and after is not None
    assert before < leap < after
    assert parse_instant("2024-01-01T00:00:00.1234567891Z") == parse_instant("2024-01-01T00:00:00.123456789Z")


def test_date_operands_follow_the_rule_grammar() -> None:
    assert date_operand("2030-01-01T00:00:00.250+01:00") is not None
    for refused in ("2030-01-01T00:00:00", "2030-01-01T00:00:00.2500Z", "2030-01-01 00:00:00Z",
                    "2030-01-01T00:00:00z", "2030-1-1T00:00:00Z"):
        assert date_operand(refused) is None, refused


@pytest.mark.parametrize(("text", "ok"), [
    ("10.0.0.1", True), (" 10.0.0.1", False), ("10.0.0.1 ", False), ("010.0.0.1", False),
    ("10.0.0", False), ("::1", True), ("::ffff:10.0.0.1", True), ("fe80::1%eth0", False),
    ("[::1]", False), ("1:2:3:4:5:6:7::", True), ("10.0.0.1/32", False),
])
def test_addresses_rust_reads(text: str, ok: bool) -> None:
    assert (parse_address(text) is not None) is ok


@pytest.mark.parametrize(("text", "prefix"), [
    ("10.0.0.0/8", 8), ("10.1.2.3/8", 8), ("10.0.0.1", 32), ("10.0.0.0/255.255.0.0", 16),
    ("10.0.0.0/+8", 8), ("10.0.0.0/08", 8), ("::1", 128), ("fe80::/10", 10),
    ("10.0.0.0/33", None), ("10.0.0.0/255.0.255.0", None), ("10.0.0.0/-8", None),
    ("10.0.0.0/8/8", None), ("10.0.0.0/ 8", None), (" 10.0.0.0/8", None), ("::/ffff::", None),
])
def test_networks_the_ipnetwork_crate_reads(text: str, prefix: int | None) -> None:
    found = parse_network(text)
    assert (found.prefixlen if found is not None else None) == prefix


def test_semver_numbers_are_unsigned_64_bit() -> None:
    assert semver_key("18446744073709551615.0.0") is not None
    assert semver_key("18446744073709551616.0.0") is None
    assert semver_operand(" 1.2.3\t") == semver_key("1.2.3") and semver_key(" 1.2.3") is None


@pytest.mark.parametrize(("text", "ok"), [
    ("plain", True), ('say "hi"', True), ("a\\b", True), ('\\"', True), ("", True),
    ("c:\\", False), ("a\\\\", False),
])
def test_only_a_trailing_backslash_breaks_quoting(text: str, ok: bool) -> None:
    assert survives_quoting(text) is ok
