"""PromQL templates: placeholders filled with escaped values, and bad templates refused."""

from __future__ import annotations

import pytest

from turnout.analysis.promql import QueryTemplate, check_template, regex_escape, string_escape
from turnout.errors import UserError


def test_placeholders_are_filled_and_promql_braces_kept() -> None:
    t = QueryTemplate.parse('sum(http_requests_total{app="shop", version="{version}", rev=\'{revision}\'})')
    assert t.placeholders == {"version", "revision"}
    assert t.render({"version": "v2", "revision": "v2-abcdef12"}) == (
        'sum(http_requests_total{app="shop", version="v2", rev=\'v2-abcdef12\'})')


def test_one_placeholder_may_appear_twice_and_beside_other_text() -> None:
    t = QueryTemplate.parse('sum(a{v="{version}"}) + sum(b{v="release-{version}-x"})')
    assert t.render({"version": "v3"}) == 'sum(a{v="v3"}) + sum(b{v="release-v3-x"})'


@pytest.mark.parametrize(("value", "quote", "escaped"), [
    ('v2"} or vector(1) #', '"', 'v2\\"} or vector(1) #'),
    ("it's", "'", "it\\'s"),
    ('say "hi"', "'", 'say "hi"'),  # the other quote needs no escape (PromQL refuses one)
    ("back\\slash", '"', "back\\\\slash"),
    ("two\nlines\ttab\x00nul\x7f", '"', "two\\nlines\\ttab\\x00nul\\x7f"),
    ("ünïcode", '"', "ünïcode"),
])
def test_string_escape(value: str, quote: str, escaped: str) -> None:
    assert string_escape(value, quote) == escaped


def test_a_value_cannot_end_its_label_value_early() -> None:
    t = QueryTemplate.parse('sum(x{version="{version}"})')
    hostile = '"} or vector(1) or x{a="'
    assert t.render({"version": hostile}) == 'sum(x{version="\\"} or vector(1) or x{a=\\""})'


def test_a_regex_matcher_gets_a_value_that_matches_only_itself() -> None:
    t = QueryTemplate.parse('sum(x{version=~"{version}", flag !~ "{flag}"})')
    assert t.render({"version": "v1.0+b", "flag": "a|b"}) == (
        'sum(x{version=~"v1\\\\.0\\\\+b", flag !~ "a\\\\|b"})')
    assert regex_escape("a.b*c(d)[e]{f}^$|?\\") == "a\\.b\\*c\\(d\\)\\[e\\]\\{f\\}\\^\\$\\|\\?\\\\"


def test_placeholders_in_a_comment_or_an_escaped_quote_are_text() -> None:
    t = QueryTemplate.parse('sum(x{a="say \\"{version}\\""}) # not {version} here\n')
    assert t.render({"version": "v1"}) == 'sum(x{a="say \\"v1\\""}) # not {version} here\n'


@pytest.mark.parametrize(("text", "problem"), [
    ('sum(x{version="{verison}"})', "unknown placeholder {verison} at column 16 (known: {version}, "
                                    "{revision}, {flag}, {cohort})"),
    ("sum(x{version={version}})", "placeholder {version} at column 15 is outside a quoted label value"),
    ('sum(x{version="{version}"}', "'(' at column 4 is never closed"),
    ('sum(x{version="{version}"}))', "unbalanced ')' at column 28"),
    ('sum(x{version="{version}")}', "unbalanced ')' at column 26"),
    ('sum(x{version="{version}})', "the string opened at column 15 is never closed"),
    ("sum(x{version=`{version}`})", "placeholder {version} at column 16 is in a raw `string`"),
    ("  ", "is empty"),
])
def test_bad_templates_are_refused_with_the_column(text: str, problem: str) -> None:
    assert any(problem in p for p in check_template(text)), check_template(text)
    with pytest.raises(UserError, match="errors query") as caught:
        QueryTemplate.parse(text, name="errors")
    assert problem in str(caught.value)


def test_a_good_template_has_no_problem() -> None:
    assert check_template('sum by (le) (rate(x_bucket{version="{version}"}[5m]))') == []
