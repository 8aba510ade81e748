"""PromQL query templates: a subject's label values put into a query without breaking it.

A template is PromQL with placeholders for the subject watched, each inside a quoted label
value: `sum(demo_requests_total{version="{version}"})`. The placeholders are `{version}`
and `{revision}` for a revision, `{flag}` and `{cohort}` (`on` or `off`) for a flag's
cohort. PromQL's own braces stay as they are: a placeholder is a bare name in braces, which
no PromQL selector is.

A value is escaped for the string it lands in (the quote that opened it, backslashes and
control characters), and in a regular-expression matcher (`=~`, `!~`) its regex
metacharacters too, so a revision id or a flag name can never end the label value early,
add a matcher, or match more than itself. A template is checked once, when the source is
made: an unknown placeholder, one outside a quoted string, an unclosed string or
unbalanced brackets are refused with the position. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from turnout.errors import UserError

PLACEHOLDERS = ("version", "revision", "flag", "cohort")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


@dataclass(frozen=True)
class _Slot:
    """One placeholder: where it sits in the template and how its value is quoted."""

    name: str
    start: int
    end: int
    quote: str  # the quote of the string literal holding it
    regex: bool  # the string is the value of a =~ or !~ matcher


@dataclass(frozen=True)
class QueryTemplate:
    """A checked template; `render` fills it for one subject's label values."""

    text: str
    slots: tuple[_Slot, ...]

    @classmethod
    def parse(cls, text: str, *, name: str = "query") -> QueryTemplate:
        """The template, or UserError naming `name` and every problem found."""
        slots, problems = _scan(text)
        if not text.strip():
            problems.insert(0, "is empty")
        if problems:
            raise UserError("\n".join(f"{name} query {text!r}: {p}" for p in problems))
        return cls(text, tuple(slots))

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(slot.name for slot in self.slots)

    def render(self, values: Mapping[str, str]) -> str:
        """The query with each placeholder replaced by its escaped value (KeyError if missing)."""
        out: list[str] = []
        at = 0
        for slot in self.slots:
            value = values[slot.name]
            if slot.regex:
                value = regex_escape(value)
            out += [self.text[at:slot.start], string_escape(value, slot.quote)]
            at = slot.end
        out.append(self.text[at:])
        return "".join(out)


def check_template(text: str) -> list[str]:
    """What is wrong with a template (empty when nothing), for a spec's validation."""
    return _scan(text)[1] if text.strip() else ["is empty"]


def string_escape(value: str, quote: str) -> str:
    """`value` as the inside of a PromQL string opened by `quote` (`"` or `'`)."""
    out: list[str] = []
    for ch in value:
        if ch in ("\\", quote):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def regex_escape(value: str) -> str:
    """`value` as a regular expression (RE2, anchored by PromQL) that matches only itself."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in value)


def _scan(text: str) -> tuple[list[_Slot], list[str]]:
    """The placeholders of `text` and its problems, in one pass over strings and brackets."""
    slots: list[_Slot] = []
    problems: list[str] = []
    stack: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        match = _PLACEHOLDER.match(text, i)
        if match:
            problems.append(_unknown(match, i) if match.group(1) not in PLACEHOLDERS else
                            f"placeholder {match.group(0)} at column {i + 1} is outside a quoted "
                            f"label value (write it as \"{match.group(0)}\")")
            i = match.end()
        elif ch == "#":  # a comment, to the end of the line
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
        elif ch in "\"'`":
            i = _string(text, i, slots, problems)
        elif ch in _OPENERS:
            stack.append((ch, i))
            i += 1
        elif ch in _OPENERS.values():
            if not stack or _OPENERS[stack[-1][0]] != ch:
                problems.append(f"unbalanced {ch!r} at column {i + 1}")
                return slots, problems
            stack.pop()
            i += 1
        else:
            i += 1
    problems += [f"{opener!r} at column {at + 1} is never closed" for opener, at in stack]
    return slots, problems


def _string(text: str, start: int, slots: list[_Slot], problems: list[str]) -> int:
    """Scan the string literal opening at `start`; return the index after its closing quote."""
    quote = text[start]
    regex = text[:start].rstrip().endswith(("=~", "!~"))
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return i + 1
        if ch == "\\" and quote != "`":
            i += 2
            continue
        match = _PLACEHOLDER.match(text, i)
        if match and match.group(1) not in PLACEHOLDERS:
            problems.append(_unknown(match, i))
            i = match.end()
        elif match and quote == "`":
            problems.append(f"placeholder {match.group(0)} at column {i + 1} is in a raw "
                            "`string`, which cannot be escaped: use double quotes")
            i = match.end()
        elif match:
            slots.append(_Slot(match.group(1), i, match.end(), quote, regex))
            i = match.end()
        else:
            i += 1
    problems.append(f"the string opened at column {start + 1} is never closed")
    return i


def _unknown(match: re.Match[str], at: int) -> str:
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    return f"unknown placeholder {match.group(0)} at column {at + 1} (known: {known})"
