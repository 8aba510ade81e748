"""Invalid specs: every problem names the file as given, the line and the field path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.errors import SpecError, UserError
from turnout.specfile import apply_overrides, find_spec, load_spec

VALID = """\
service: shop
listen: 127.0.0.1:8080
instances: 3
run:
  command: [python3, app.py, --port, "{port}"]
health: {path: /healthz}
"""

# (case id, spec text, line, field path, words the message must contain)
CASES = [
    ("unknown top-level", "service: a\ninstancs: 2\nrun: {command: [x]}\n",
     2, "instancs", "unknown field; did you mean 'instances'?"),
    ("unknown nested", "service: a\nrun:\n  command: [x]\n  enviro: {A: b}\n",
     4, "run.enviro", "unknown field"),
    ("misplaced field", "service: a\nrun: {command: [x]}\nmax_surge: 2\n",
     3, "max_surge", "it belongs under 'strategy'"),
    ("missing service", "# a comment\nrun: {command: [x]}\n",
     2, "service", "required field is missing"),
    ("bad service name", "service: My Shop\nrun: {command: [x]}\n",
     1, "service", "got 'My Shop'"),
    ("missing command", "service: a\nrun:\n  cwd: .\n",
     2, "run.command", "required field is missing"),
    ("empty command", "service: a\nrun:\n  command: []\n",
     3, "run.command", "must not be empty"),
    ("command as a string", "service: a\nrun:\n  command: python3 app.py\n",
     3, "run.command", "expected a list of arguments"),
    ("bad duration", "service: a\nrun: {command: [x]}\nhealth:\n  interval: soon\n",
     4, "health.interval", "expected a duration such as 500ms, 30s or 5m, got 'soon'"),
    ("negative duration", "service: a\nrun:\n  command: [x]\n  grace: -5\n",
     4, "run.grace", "cannot be negative"),
    ("bad percentage", "service: a\nrun: {command: [x]}\nstrategy:\n  max_surge: 150%\n",
     4, "strategy.max_surge", "between 0% and 100%"),
    ("bad count", "service: a\nrun: {command: [x]}\nstrategy:\n  max_surge: lots\n",
     4, "strategy.max_surge",
     "expected a count such as 1 or a percentage such as 25%, got 'lots'"),
    ("instances 0", "service: a\ninstances: 0\nrun: {command: [x]}\n",
     2, "instances", "must be at least 1, got 0"),
    ("instances not an int", "service: a\ninstances: three\nrun: {command: [x]}\n",
     2, "instances", "expected a whole number, got 'three'"),
    ("listen without port", "service: a\nlisten: 127.0.0.1\nrun: {command: [x]}\n",
     2, "listen", "expected host:port"),
    ("listen bad port", "service: a\nlisten: 127.0.0.1:70000\nrun: {command: [x]}\n",
     2, "listen", "got '127.0.0.1:70000'"),
    ("rolling 0/0", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: rolling\n"
     "  max_surge: 0\n  max_unavailable: 0\n",
     6, "strategy.max_unavailable", "cannot both be 0"),
    ("canary weights decrease", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canary\n"
     "  steps:\n    - weight: 50\n    - weight: 20\n",
     5, "strategy.steps", "must not decrease: 50 then 20"),
    ("canary step with two keys", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canary\n"
     "  steps:\n    - weight: 10\n    - {weight: 20, pause: 10s}\n",
     7, "strategy.steps.1", "exactly one of weight, pause or analysis"),
    ("unknown strategy kind", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: bluegreen\n",
     4, "strategy.kind", "did you mean 'blue-green'?"),
    ("health path without slash", "service: a\nrun: {command: [x]}\nhealth:\n  path: healthz\n",
     4, "health.path", "must start with /"),
    ("duplicate key", "service: a\nrun: {command: [x]}\ninstances: 2\ninstances: 3\n",
     4, "instances", "duplicate key; it is already set on line 3"),
    ("unknown placeholder", "service: a\nrun:\n  command: [x, --port, '{prot}']\n",
     3, "run.command.2", "unknown placeholder {prot}"),
    ("placeholder in env", "service: a\nrun:\n  command: [x]\n  env:\n    HOME_DIR: '{home}'\n",
     5, "run.env.HOME_DIR", "unknown placeholder {home}"),
    ("timeout above deadline", "service: a\nrun: {command: [x]}\nhealth:\n  timeout: 40s\n"
     "  deadline: 30s\n",
     4, "health.timeout", "40s is longer than health.deadline (30s)"),
    ("deadline below default timeout", "service: a\nrun: {command: [x]}\nhealth:\n"
     "  deadline: 1s\n",
     4, "health.deadline", "shorter than health.timeout (2s, the default)"),
    ("preview equals listen", "service: a\nrun: {command: [x]}\nlisten: 127.0.0.1:9000\n"
     "routing:\n  preview_listen: 127.0.0.1:9000\n",
     5, "routing.preview_listen", "must differ from listen"),
    ("canary without steps", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canary\n",
     3, "strategy.steps", "a canary needs steps"),
    ("match without canary", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: rolling\n"
     "  match:\n    - users: [ann]\n",
     5, "strategy.match", "only a canary strategy uses match"),
    ("tests without blue-green", "service: a\nrun: {command: [x]}\nstrategy:\n"
     "  tests:\n    - http: /smoke\n",
     4, "strategy.tests", "only a blue-green strategy uses tests"),
    ("duplicate match user", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canary\n"
     "  steps: [{weight: 100}]\n  match:\n    - users: [ann, bob]\n    - users:\n        - ann\n",
     9, "strategy.match.1.users.0", "user 'ann' is already listed at strategy.match.0.users.0"),
    ("test of unknown kind", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: blue-green\n"
     "  tests:\n    - {get: /smoke}\n",
     6, "strategy.tests.0", "a test is either {http: /path} or {command: [argv]}"),
    ("pause with bad duration", "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canary\n"
     "  steps:\n    - pause: a while\n",
     6, "strategy.steps.0.pause", "got 'a while'"),
    ("wrong type for a section", "service: a\nrun: {command: [x]}\nhealth: fast\n",
     3, "health", "expected a mapping of fields, got 'fast'"),
    ("header timeout 0", "service: a\nrun: {command: [x]}\nrouting:\n  timeouts:\n    header: 0s\n",
     5, "routing.timeouts.header", "must be at least 0.1"),
    ("bad size", "service: a\nrun: {command: [x]}\nrouting:\n  limits:\n    max_header_size: huge\n",
     5, "routing.limits.max_header_size", "expected a size such as 64KiB"),
    ("header limit too small", "service: a\nrun: {command: [x]}\nrouting:\n  limits:\n"
     "    max_header_size: 100\n", 5, "routing.limits.max_header_size", "at least 1024"),
    ("unknown timeout", "service: a\nrun: {command: [x]}\nrouting:\n  timeouts:\n    read: 5s\n",
     5, "routing.timeouts.read", "unknown field"),
    ("bad buffering", "service: a\nrun: {command: [x]}\nrouting:\n  buffer_requests: lots\n",
     4, "routing.buffer_requests", "expected a size"),
]


def _problems(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    (tmp_path / "turnout.yaml").write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(Path("turnout.yaml"), overrides)
    return caught.value.problems


@pytest.mark.parametrize(("text", "line", "field", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_spec_names_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: int, field: str, words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    problems = _problems(tmp_path, text)
    expected = f"turnout.yaml:{line}: {field}: "
    matching = [p for p in problems if p.startswith(expected)]
    assert matching, f"no problem starts with {expected!r}: {problems}"
    assert any(words in p for p in matching), problems


def test_all_problems_are_reported_at_once_in_line_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = "service: BAD\ninstances: 0\nrun:\n  command: []\nhealth: {path: x}\n"
    problems = _problems(tmp_path, text)
    assert [p.split(":")[1] for p in problems] == ["1", "2", "4", "5"]


def test_an_unknown_kind_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = "service: a\nrun: {command: [x]}\nstrategy:\n  kind: canari\n  match: [{users: [a]}]\n"
    problems = _problems(tmp_path, text)
    assert len(problems) == 1 and problems[0].startswith("turnout.yaml:4: strategy.kind:"), problems


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_spec(path).service == "shop"


def test_the_file_name_is_kept_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "web.yaml").write_text("service: a\nrun: {command: [x]}\nwat: 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        load_spec(Path("deploy/web.yaml"))
    assert caught.value.problems == [
        "deploy/web.yaml:3: wat: unknown field; known fields here: health, instances, listen, "
        "metrics, platform, router, routing, run, service, strategy"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("service: a\nrun: [command: x\n", "turnout.yaml:3: invalid YAML:"),
        ("service: a\n\tinstances: 2\n", "turnout.yaml:2: invalid YAML:"),
        ("", "turnout.yaml: the file is empty"),
        ("# only a comment\n", "turnout.yaml: the file is empty"),
        ("- service: a\n", "turnout.yaml:1: the top level must be a mapping"),
        ("just words\n", "turnout.yaml:1: the top level must be a mapping"),
        ("service: a\n---\nservice: b\n", "turnout.yaml:2: invalid YAML:"),
        ("service: !!python/object:os.system x\nrun: {command: [x]}\n",
         "turnout.yaml:1: service: invalid value:"),
        ("service: a\nrun: &r {command: [x], cwd: *r}\n",
         "turnout.yaml:2: run.cwd: refers to itself through a YAML alias"),
        ("service: a\nrun:\n  <<: 5\n", "turnout.yaml:2: run: invalid merge:"),
    ],
    ids=["syntax", "tab", "empty", "comment only", "list", "scalar", "two documents", "unsafe tag",
         "recursive alias", "bad merge"],
)
def test_unreadable_yaml_is_a_clean_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    problems = _problems(tmp_path, text)
    assert problems[0].startswith(expected), problems
    assert len(problems) == 1, problems


def test_missing_and_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"^nope\.yaml: file not found$"):
        load_spec(Path("nope.yaml"))
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(Path("dir.yaml"))
    (tmp_path / "plain.yaml").write_text("x")
    with pytest.raises(SpecError, match=r"^plain\.yaml/turnout\.yaml: cannot be read: Not a dir"):
        load_spec(Path("plain.yaml/turnout.yaml"))
    (tmp_path / "latin.yaml").write_bytes(b"service: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(Path("latin.yaml"))
    locked = tmp_path / "locked.yaml"
    locked.write_text(VALID)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(SpecError, match="permission denied"):
            load_spec(Path("locked.yaml"))
    finally:
        locked.chmod(0o644)


# -- overrides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("instances=many", "--set instances: instances: expected a whole number, got 'many'"),
        ("instances=0", "--set instances: instances: must be at least 1, got 0"),
        ("instancez=4", "--set instancez: instancez: unknown field; did you mean 'instances'?"),
        ("instances.count=4", "--set instances.count: instances is 3, so it has no field 'count'"),
        ("run.command.x=4", "--set run.command.x: run.command is a list; 'x' is not an index"),
        ("run.command.9=4", "--set run.command.9: index 9 is out of range: run.command has 4"),
        ("run..cwd=x", "--set run..cwd: KEY 'run..cwd' has an empty part"),
        ("instances", "--set instances: expected KEY=VALUE"),
        ("run.env.A=[1, 2", "--set run.env.A: VALUE '[1, 2' is not valid YAML"),
        ("strategy.kind=canary-ish", "--set strategy.kind: strategy.kind: expected 'big-bang'"),
        ("run.env.MODE={a: 1}", "--set run.env.MODE: run.env.MODE: expected text, got a mapping"),
    ],
)
def test_bad_overrides_name_the_set_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    problems = _problems(tmp_path, VALID, (override,))
    assert any(p.startswith(expected) for p in problems), problems


def test_override_problems_come_after_file_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = VALID.replace("instances: 3", "instances: 0")
    problems = _problems(tmp_path, text, ("health.timeout=soon",))
    assert problems == [
        "turnout.yaml:3: instances: must be at least 1, got 0",
        "--set health.timeout: health.timeout: expected a duration such as 500ms, 30s or 5m, "
        "got 'soon'",
    ]


def test_an_override_replaces_the_bad_value_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "turnout.yaml").write_text(VALID.replace("instances: 3", "instances: 0"))
    assert load_spec(Path("turnout.yaml"), ["instances=2"]).instances == 2


def test_apply_overrides_raises_on_a_bad_key_and_leaves_its_input_alone() -> None:
    data = {"run": {"command": ["x"]}}
    with pytest.raises(SpecError, match=r"^--set run\.command\.x:"):
        apply_overrides(data, ["run.command.x=1"])
    result = apply_overrides(data, ["run.command.1=--fast", "run.env.A=b"])
    assert result == {"run": {"command": ["x", "--fast"], "env": {"A": "b"}}}
    assert data == {"run": {"command": ["x"]}}


# -- finding the file ---------------------------------------------------------------


def test_find_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"no turnout\.yaml in the current directory; pass -f"):
        find_spec(Path.cwd(), None)
    with pytest.raises(UserError, match=r"^other\.yaml: no such spec file$"):
        find_spec(Path.cwd(), "other.yaml")
    (tmp_path / "turnout.yaml").write_text(VALID)
    (tmp_path / "other.yaml").write_text(VALID)
    assert find_spec(Path.cwd(), None) == Path("turnout.yaml")
    assert find_spec(None, "other.yaml") == Path("other.yaml")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    assert find_spec(elsewhere.parent, None) == Path("turnout.yaml")
    monkeypatch.chdir(elsewhere)
    assert find_spec(tmp_path, None) == tmp_path / "turnout.yaml"
    with pytest.raises(UserError, match=r"no turnout\.yaml in"):
        find_spec(Path.cwd(), None)
