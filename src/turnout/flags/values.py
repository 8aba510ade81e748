"""Context values and operands read exactly as Unleash's official engine reads them.

The official SDKs evaluate with yggdrasil (Rust). It turns each strategy into a rule text
that a PEG grammar parses, and it parses context values with Rust's standard parsers:
numbers with ``f64::from_str``, dates with chrono's relaxed RFC 3339 (an offset is
required), addresses with ``IpAddr::from_str``, CIDR blocks with the ``ipnetwork``
crate. Python's own parsers are more lenient (``float(" 6")``, ``float("1_000")``,
``datetime.fromisoformat`` without a zone, ``ip_address`` with a ``%scope``), and every
leniency is a user whom turnout and an SDK would answer differently. So each reader here
accepts what its Rust counterpart accepts and nothing else, and the ``*_operand``
functions accept what the rule grammar accepts where a constraint's operand is pasted
into the rule text. ``survives_quoting`` says whether a string operand comes back from
the rule text as it went in.

Every function returns None for text the official engine refuses; none raises.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, datetime

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Instant = tuple[int, int]
"""A moment as (seconds since 1970 UTC, nanoseconds); a leap second has 1e9 and more."""

# Unicode White_Space: what Rust's `trim_start` / `trim` remove (str.isspace differs)
_RUST_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GRAMMAR_SPACE = " \t"  # what the rule grammar skips between tokens

I64_MAX = 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
MIN_YEAR, MAX_YEAR = -262_143, 262_142  # chrono's NaiveDate range
_EPOCH = date(1970, 1, 1).toordinal()


def rust_trim_start(text: str) -> str:
    return text.lstrip("".join(_RUST_SPACE))


def rust_trim(text: str) -> str:
    chars = "".join(_RUST_SPACE)
    return text.strip(chars)


# -- numbers -----------------------------------------------------------------------

_RUST_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))"
)
_GRAMMAR_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")


def parse_number(text: str) -> float | None:
    """A context value as Rust's ``f64::from_str``: no spaces, no ``_``, inf and nan allowed."""
    if _RUST_FLOAT.fullmatch(text) is None:
        return None
    return float(text)


def number_operand(text: str) -> float | None:
    """A NUM_* operand as the rule grammar's ``num`` (surrounding spaces and tabs skipped)."""
    token = text.strip(_GRAMMAR_SPACE)
    if _GRAMMAR_NUMBER.fullmatch(token) is None:
        return None
    return float(token)


# -- dates: chrono's relaxed RFC 3339 ---------------------------------------------


class _Refused(ValueError):
    pass


def _number(text: str, most: int) -> tuple[int, str]:
    """Up to `most` leading ASCII digits (at least one) as an i64, and the rest."""
    count = 0
    while count < len(text) and count < most and "0" <= text[count] <= "9":
        count += 1
    if count == 0:
        raise _Refused
    value = int(text[:count])
    if value > I64_MAX:
        raise _Refused
    return value, text[count:]


def _field(text: str, most: int, low: int, high: int) -> tuple[int, str]:
    value, rest = _number(rust_trim_start(text), most)
    if not low <= value <= high:
        raise _Refused
    return value, rest


def _literal(text: str, char: str) -> str:
    text = rust_trim_start(text)
    if not text.startswith(char):
        raise _Refused
    return text[1:]


def _year(text: str) -> tuple[int, str]:
    text = rust_trim_start(text)
    if text[:1] in ("+", "-"):
        value, rest = _number(text[1:], len(text))
        value = -value if text[0] == "-" else value
    else:
        value, rest = _number(text, 4)
    if not I32_MIN <= value <= I32_MAX:
        raise _Refused
    return value, rest


def _fraction(text: str) -> tuple[int, str]:
    """`.digits` (at most nine count, the rest skipped) as nanoseconds; no dot: zero."""
    if not text.startswith("."):
        return 0, text
    digits, rest = text[1:], text[1:].lstrip("0123456789")
    used = digits[: len(digits) - len(rest)]
    if not used:
        raise _Refused
    return int(used[:9].ljust(9, "0")), rest


def _offset(text: str) -> tuple[int, str]:
    """`Z`, `UTC` or `±HH[:]MM` (colons and spaces between) as seconds east of UTC."""
    text = rust_trim_start(text)
    if text[:3].upper() == "UTC" and text[:3].isascii():
        return 0, text[3:]
    if text[:1] in ("Z", "z"):
        return 0, text[1:]
    sign = {"+": 1, "-": -1, "\u2212": -1}.get(text[:1])
    if sign is None or not (len(text) >= 3 and text[1:3].isascii() and text[1:3].isdigit()):
        raise _Refused
    hours, text = int(text[1:3]), text[3:].lstrip(":" + "".join(_RUST_SPACE))
    if not (len(text) >= 2 and text[:2].isascii() and text[:2].isdigit() and text[0] <= "5"):
        raise _Refused
    return sign * (hours * 3600 + int(text[:2]) * 60), text[2:]


def _days(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date; ValueError if there is none."""
    cycles = (year - 2000) // 400  # the calendar repeats every 400 years
    return date(year - 400 * cycles, month, day).toordinal() - _EPOCH + cycles * 146_097


def _instant(text: str) -> Instant:
    year, text = _year(text)
    month, text = _field(_literal(text, "-"), 2, 1, 12)
    day, text = _field(_literal(text, "-"), 2, 1, 31)
    if text[:1] not in ("T", "t", " ") or not text:
        raise _Refused
    hour, text = _field(text[1:], 2, 0, 23)
    minute, text = _field(_literal(text, ":"), 2, 0, 59)
    second, text = _field(_literal(text, ":"), 2, 0, 60)
    nanos, text = _fraction(text)
    offset, text = _offset(text)
    if rust_trim_start(text) or not -86_400 < offset < 86_400 or not MIN_YEAR <= year <= MAX_YEAR:
        raise _Refused
    if second == 60:  # a leap second: :59 and one more second of fraction
        second, nanos = 59, nanos + 1_000_000_000
    try:
        days = _days(year, month, day)
    except ValueError:
        raise _Refused from None
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset
    if not _days(MIN_YEAR, 1, 1) * 86_400 <= seconds < (_days(MAX_YEAR, 12, 31) + 1) * 86_400:
        raise _Refused
    return seconds, nanos


def parse_instant(text: str) -> Instant | None:
    """A context date as chrono's ``DateTime<Utc>::from_str``: RFC 3339, relaxed, with offset."""
    try:
        return _instant(text)
    except (_Refused, ValueError, OverflowError):
        return None


def instant_of(value: datetime) -> Instant | None:
    """A datetime in a context, as the official Python SDK sends it (``isoformat()``)."""
    return parse_instant(value.isoformat())


_GRAMMAR_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


def date_operand(text: str) -> Instant | None:
    """A DATE_* operand: the grammar's ``date`` (milliseconds at most, ``Z`` or ``±HH:MM``)."""
    token = text.strip(_GRAMMAR_SPACE)
    if _GRAMMAR_DATE.fullmatch(token) is None:
        return None
    return parse_instant(token)


# -- addresses ---------------------------------------------------------------------


def parse_address(text: str) -> Address | None:
    """A context address as Rust's ``IpAddr::from_str``: no spaces, no ``%zone``."""
    if "%" in text or not text.isascii():
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _prefix(text: str, most: int) -> int | None:
    """A prefix length as Rust's ``u8::from_str`` (an optional ``+``), at most `most`."""
    digits = text[1:] if text.startswith("+") else text
    if not digits or not digits.isascii() or not digits.isdigit() or int(digits) > 255:
        return None
    value = int(digits)
    return value if value <= most else None


def _v4_network(address: str, prefix: str | None) -> Network | None:
    found = parse_address(address)
    if not isinstance(found, ipaddress.IPv4Address):
        return None
    if prefix is None:
        length: int | None = 32
    else:
        mask = parse_address(prefix)
        if isinstance(mask, ipaddress.IPv4Address):
            bits = int(mask)
            length = 32 - (~bits & 0xFFFFFFFF).bit_length()
            if bits != (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF:
                return None  # not a contiguous mask
        else:
            length = _prefix(prefix, 32)
    if length is None:
        return None
    return ipaddress.IPv4Network((int(found), length), strict=False)


def _v6_network(address: str, prefix: str | None) -> Network | None:
    found = parse_address(address)
    length = _prefix("128" if prefix is None else prefix, 128)
    if not isinstance(found, ipaddress.IPv6Address) or length is None:
        return None
    return ipaddress.IPv6Network((int(found), length), strict=False)


def parse_network(text: str) -> Network | None:
    """An address or CIDR block as the ``ipnetwork`` crate reads one (an IPv4 netmask too)."""
    address, slash, prefix = text.partition("/")
    if "/" in prefix:
        return None
    part = prefix if slash else None
    found = _v4_network(address, part)
    return found if found is not None else _v6_network(address, part)


def address_in(text: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether context value `text` is an address inside one of `networks` (same family)."""
    if text is None:
        return False
    address = parse_address(text)
    return address is not None and any(address in network for network in networks)


# -- text pasted into the rule --------------------------------------------------------


def survives_quoting(text: str) -> bool:
    """Whether a string operand comes back unchanged from the rule text.

    yggdrasil writes it between double quotes with each ``"`` escaped as ``\\"`` and reads
    it back up to the first quote not escaped; a trailing backslash escapes the closing
    quote instead, so the rule no longer parses and the whole flag is off.
    """
    quoted = text.replace('"', '\\"') + '"'
    i = 0
    while i < len(quoted):
        if quoted.startswith('\\"', i):
            i += 2
        elif quoted[i] == '"':
            return i == len(quoted) - 1 and quoted[:i].replace('\\"', '"') == text
        else:
            i += 1
    return False


def fits_unquoted(text: str) -> bool:
    """Whether a name yggdrasil pastes between quotes without escaping reads back as itself."""
    return '"' not in text and "\\" not in text
