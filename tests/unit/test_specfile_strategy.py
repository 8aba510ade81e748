"""The spec's strategy as a union of kinds: each kind's fields, errors at file, line and field,
kind overrides (`--set strategy.kind`, `--strategy`) that keep what the new kind reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from turnout.errors import SpecError
from turnout.spec import BlueGreen, Canary, FeatureToggle, Rolling
from turnout.specfile import (
    dump_spec,
    kind_override,
    load_spec,
    parse_spec,
    spec_json_schema,
    with_kind,
)

HEAD = "service: a\nrun: {command: [x]}\nstrategy:\n"

# (case id, strategy lines, line, field path, words the message must contain)
CASES = [
    ("max_surge in a canary", "  kind: canary\n  steps: [{weight: 50}]\n  max_surge: 2\n",
     6, "strategy.max_surge", "only a rolling strategy uses max_surge; this one is 'canary'"),
    ("flag in a rolling", "  flag: new-checkout\n",
     4, "strategy.flag", "only a feature-toggle strategy uses flag; this one is 'rolling'"),
    ("gate in a blue-green", "  kind: blue-green\n  gate: {min_requests: 5}\n",
     5, "strategy.gate", "only a canary or feature-toggle strategy uses gate; this one is 'blue-green'"),
    ("steps in a big bang", "  kind: big-bang\n  steps: [{weight: 10}]\n",
     5, "strategy.steps", "only a canary strategy uses steps; this one is 'big-bang'"),
    ("toggle without flag", "  kind: feature-toggle\n  ramp: [{percent: 10}]\n",
     3, "strategy.flag", "required field is missing"),
    ("toggle field of another ship", "  kind: feature-toggle\n  flag: f\n  ship: rolling\n"
     "  tests: [{http: /smoke}]\n",
     7, "strategy.tests", "only a blue-green strategy uses tests; this feature-toggle ships with 'rolling'"),
    ("toggle field of the default ship", "  kind: feature-toggle\n  flag: f\n  steps: [{weight: 5}]\n",
     6, "strategy.steps", "only a canary strategy uses steps; this feature-toggle ships with 'rolling'"),
    ("toggle shipping a canary without steps", "  kind: feature-toggle\n  flag: f\n  ship: canary\n",
     3, "strategy.steps", "a canary needs steps"),
    ("toggle shipping rolling 0/0", "  kind: feature-toggle\n  flag: f\n  max_surge: 0\n"
     "  max_unavailable: 0\n", 7, "strategy.max_unavailable", "cannot both be 0"),
    ("toggle ships an unknown kind", "  kind: feature-toggle\n  flag: f\n  ship: canari\n"
     "  steps: [{weight: 5}]\n", 6, "strategy.ship", "did you mean 'canary'?"),
    ("kind not text", "  kind: 5\n", 4, "strategy.kind", "expected 'big-bang', 'rolling'"),
    ("misspelt field of the kind", "  kind: canary\n  stesp: [{weight: 5}]\n",
     5, "strategy.stesp", "unknown field; did you mean 'steps'?"),
    ("unknown field lists the kind's own", "  kind: blue-green\n  wibble: 1\n",
     5, "strategy.wibble",
     "known fields here: analysis, auto_promote, kind, preview_analysis, rollback_window, tests, "
     "webhooks"),
    ("preview analysis in a canary", "  kind: canary\n  steps: [{weight: 5}]\n"
     "  preview_analysis: {duration: 10s}\n", 6, "strategy.preview_analysis",
     "only a blue-green strategy uses preview_analysis; this one is 'canary'"),
    ("preview analysis with a misspelt limit", "  kind: blue-green\n  preview_analysis:\n"
     "    duration: 10s\n    max_eror_rate: 5%\n", 7, "strategy.preview_analysis.max_eror_rate",
     "did you mean 'max_error_rate'?"),
    ("analysis alpha out of range",
     "  kind: rolling\n  analysis: {max_error_rate_increase: 1%, alpha: 60%}\n",
     5, "strategy.analysis", "alpha must be above 0 and below 50%"),
    ("analysis increase not a duration", "  kind: canary\n  steps: [{weight: 5}]\n"
     "  analysis:\n    max_p99_increase: soon\n", 7, "strategy.analysis.max_p99_increase", "duration"),
    ("analysis step increase not a ratio", "  kind: canary\n  steps:\n"
     "    - analysis: {max_error_rate_increase: lots}\n", 6,
     "strategy.steps.0.analysis.max_error_rate_increase", "expected a number, got 'lots'"),
    ("webhook when misspelt", "  webhooks:\n    - {when: pre-rolout, url: http://ci/check}\n",
     5, "strategy.webhooks.0.when", "did you mean 'pre-rollout'?"),
    ("webhook url not http", "  kind: big-bang\n  webhooks:\n    - when: event\n      url: ftp://chat/hook\n",
     7, "strategy.webhooks.0.url", "expected an http:// or https:// URL with a host, got 'ftp://chat/hook'"),
    ("webhook url with a bad port", "  webhooks:\n    - {when: rollback, url: 'http://ci:99999/x'}\n",
     5, "strategy.webhooks.0.url", "is not a valid URL: invalid port number"),
    ("webhook url missing", "  kind: blue-green\n  webhooks:\n    - {when: confirm-promotion}\n",
     6, "strategy.webhooks.0.url", "required field is missing"),
    ("webhook timeout zero", "  kind: canary\n  steps: [{weight: 5}]\n  webhooks:\n"
     "    - {when: confirm-rollout, url: http://ci/ok, timeout: 0s}\n",
     7, "strategy.webhooks.0.timeout", "a webhook's timeout must be above 0"),
    ("webhook timeout not a duration", "  webhooks:\n    - when: event\n      url: http://ci/e\n"
     "      timeout: soon\n", 7, "strategy.webhooks.0.timeout", "duration"),
    ("event webhook retried", "  webhooks:\n    - {when: event, url: http://ci/e, retries: 2}\n",
     5, "strategy.webhooks.0.retries", "an event webhook is sent once per event"),
    ("webhook headers a list", "  webhooks:\n    - when: event\n      url: http://ci/e\n"
     "      headers: [X-Token]\n", 7, "strategy.webhooks.0.headers", "expected a mapping"),
    ("webhook header name with a space", "  kind: feature-toggle\n  flag: f\n  webhooks:\n"
     "    - when: pre-rollout\n      url: http://ci/e\n      headers: {X Token: abc}\n",
     9, "strategy.webhooks.0.headers", "'X Token' is not a header name"),
]


@pytest.mark.parametrize(("lines", "line", "field", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_strategy_error_names_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, line: int, field: str, words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("turnout.yaml").write_text(HEAD + lines)
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"))
    expected = f"turnout.yaml:{line}: {field}: "
    matching = [p for p in caught.value.problems if p.startswith(expected)]
    assert matching, f"no problem starts with {expected!r}: {caught.value.problems}"
    assert any(words in p for p in matching), caught.value.problems


def test_every_kind_takes_webhooks() -> None:
    kinds = {"big-bang": "", "rolling": "", "blue-green": "", "canary": "  steps: [{weight: 5}]\n",
             "feature-toggle": "  flag: f\n"}
    hooks = ("  webhooks:\n    - {when: confirm-promotion, url: 'https://ci.internal/approve', retries: 2,"
             " headers: {Authorization: Bearer abc, X-Attempt: 1}}\n    - {when: event, url: http://chat/hook}\n")
    for kind, lines in kinds.items():
        strategy = parse_spec(f"{HEAD}  kind: {kind}\n{lines}{hooks}").strategy
        confirm, event = strategy.webhooks
        assert (confirm.when, confirm.retries, confirm.seconds) == ("confirm-promotion", 2, 10.0)
        assert confirm.headers == {"Authorization": "Bearer abc", "X-Attempt": "1"}  # numbers as text
        assert (event.when, event.seconds) == ("event", 2.0)
        assert parse_spec(dump_spec(parse_spec(f"{HEAD}  kind: {kind}\n{lines}{hooks}"))).strategy == strategy


def test_a_strategy_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("service: a\nrun: {command: [x]}\nstrategy: canary\n")
    assert caught.value.problems == ["turnout.yaml:3: strategy: expected a mapping of fields, got 'canary'"]


def test_each_kind_is_its_own_model_and_rolling_is_the_default() -> None:
    assert isinstance(parse_spec(HEAD + "  max_surge: 2\n").strategy, Rolling)
    assert isinstance(parse_spec("service: a\nrun: {command: [x]}\n").strategy, Rolling)
    canary = parse_spec(HEAD + "  kind: canary\n  steps: [{weight: 5}]\n").strategy
    assert isinstance(canary, Canary) and not hasattr(canary, "max_surge")
    toggle = parse_spec(HEAD + "  kind: feature-toggle\n  flag: f\n  ship: blue-green\n"
                               "  tests: [{http: /smoke}]\n  auto_promote: false\n").strategy
    assert isinstance(toggle, FeatureToggle)
    assert toggle.shipping == BlueGreen(tests=[{"http": "/smoke"}], auto_promote=False)


def test_a_toggle_dumps_only_what_it_and_its_ship_read() -> None:
    spec = parse_spec(HEAD + "  kind: feature-toggle\n  flag: f\n  ship: canary\n"
                             "  steps: [{weight: 50}]\n  ramp: [{percent: 10}]\n")
    strategy = yaml.safe_load(dump_spec(spec))["strategy"]
    assert list(strategy)[:3] == ["kind", "flag", "ship"]
    assert "steps" in strategy and "max_surge" not in strategy and "tests" not in strategy
    assert parse_spec(dump_spec(spec)) == spec
    short = dump_spec(spec, defaults=False)
    assert parse_spec(short) == spec and yaml.safe_load(short)["strategy"]["kind"] == "feature-toggle"


def test_the_schema_says_which_fields_each_kind_takes() -> None:
    schema = spec_json_schema()
    assert schema["properties"]["strategy"] == {"$ref": "#/$defs/Strategy"}
    union = schema["$defs"]["Strategy"]
    assert [k["$ref"].rsplit("/", 1)[1] for k in union["oneOf"]] == [
        "BigBang", "Rolling", "BlueGreen", "Canary", "FeatureToggle"]
    assert "kind" not in schema["$defs"]["Rolling"].get("required", [])  # the default kind
    assert schema["$defs"]["Canary"]["required"][0] == "kind"
    assert schema["$defs"]["FeatureToggle"]["required"][:2] == ["kind", "flag"]
    assert "max_surge" not in schema["$defs"]["Canary"]["properties"]
    assert schema["$defs"]["Canary"]["additionalProperties"] is False


# -- overriding the kind ------------------------------------------------------------

CANARY = HEAD + "  kind: canary\n  steps: [{weight: 10}, {pause: 5s}]\n  gate: {min_requests: 3}\n" \
    "  match: [{users: [ann]}]\n"


def test_set_kind_keeps_what_the_new_kind_reads(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(CANARY)
    green = load_spec(path, ["strategy.kind=blue-green"]).strategy
    assert green == BlueGreen()
    toggle = load_spec(path, ["strategy.kind=feature-toggle", "strategy.flag=f", "strategy.ship=canary"])
    assert isinstance(toggle.strategy, FeatureToggle)
    assert toggle.strategy.gate.min_requests == 3 and len(toggle.strategy.steps) == 2
    assert toggle.strategy.match[0].users == ["ann"]


def test_set_kind_refuses_what_the_override_itself_gives_and_the_kind_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("turnout.yaml").write_text(CANARY)
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"), ["strategy.kind=rolling", "strategy.tests=[{http: /x}]"])
    assert caught.value.problems == [
        "--set strategy.tests: strategy.tests: only a blue-green strategy uses tests; this one is 'rolling'"]
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"), ["strategy.kind=feature-toggle"])
    assert caught.value.problems == ["--set strategy.kind: strategy.flag: required field is missing"]


def test_strategy_option_comes_first_so_that_set_may_add_what_the_kind_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("turnout.yaml").write_text(HEAD + "  kind: rolling\n  max_surge: 2\n")
    toggle = load_spec(Path("turnout.yaml"), [kind_override("feature-toggle"), "strategy.flag=f",
                                              "strategy.ramp=[{percent: 50}]"]).strategy
    assert isinstance(toggle, FeatureToggle) and toggle.shipping == Rolling(max_surge=2)
    assert toggle.ramp[0].percent == 50
    Path("turnout.yaml").write_text(CANARY)
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"), [kind_override("feature-toggle"), "strategy.ship=big-bang"])
    assert caught.value.problems == ["--strategy feature-toggle: strategy.flag: required field is missing"]
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"), [kind_override("canary-ish")])
    assert caught.value.problems[0].startswith(
        "--strategy canary-ish: strategy.kind: expected 'big-bang', 'rolling'")


def test_with_kind_keeps_what_the_new_kind_reads_and_names_what_it_lacks() -> None:
    spec = parse_spec(CANARY)
    assert with_kind(spec, "canary") is spec
    assert with_kind(spec, "big-bang").strategy.kind == "big-bang"
    assert isinstance(with_kind(spec, "rolling").strategy, Rolling)
    with pytest.raises(SpecError) as caught:
        with_kind(spec, "feature-toggle")
    assert caught.value.problems == ["--strategy feature-toggle: strategy.flag: required field is missing"]
    with pytest.raises(SpecError) as caught:
        with_kind(parse_spec("service: a\nrun: {command: [x]}\n"), "canary")
    assert caught.value.problems[0].startswith("--strategy canary: strategy.steps: a canary needs steps")
    with pytest.raises(SpecError, match=r"^--strategy: expected one of big-bang, rolling, .* got 'green'$"):
        with_kind(spec, "green")
    toggle = parse_spec(HEAD + "  kind: feature-toggle\n  flag: f\n  ship: canary\n"
                               "  steps: [{weight: 50}]\n  gate: {min_requests: 4}\n")
    canary = with_kind(toggle, "canary").strategy
    assert isinstance(canary, Canary) and canary.gate.min_requests == 4 and len(canary.steps) == 1
    problems: list[str] = []
    try:
        with_kind(toggle, "canary", checks=[lambda s: [(("strategy", "steps"), "too many")]])
    except SpecError as exc:
        problems = exc.problems
    assert problems == ["--strategy canary: strategy.steps: too many"]
