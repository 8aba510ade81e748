"""Valid specs: durations, counts, overrides, pauses, defaults, schema and the YAML dump."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.demo.runner import STRATEGIES as DEMO_STRATEGIES
from turnout.demo.runner import write_spec
from turnout.spec import Canary, CommandTest, Count, HttpTest, Rolling, Spec
from turnout.specfile import dump_spec, format_duration, load_spec, parse_spec, spec_json_schema
from turnout.units import parse_duration

MINIMAL = "service: shop\nrun:\n  command: [python3, app.py, --port, '{port}']\n"

FULL = """\
service: shop
listen: 127.0.0.1:8080
instances: 4
run:
  command: [python3, app.py, --port, "{port}", --workers, 2]
  cwd: releases/{version}
  env: {APP_MODE: prod, DEBUG: false, RATIO: 0.5, SLOT: "{slot}"}
  grace: 500ms
health: {path: /healthz, interval: 1s, timeout: 2s, deadline: 1m}
routing:
  user_key: {header: X-User-Id, cookie: uid}
  preview_listen: 127.0.0.1:9090
  drain_timeout: 45
strategy:
  kind: canary
  steps:
    - weight: 10
    - pause: 30s
    - analysis: {duration: 2m, max_error_rate: 0.02}
    - weight: 50
    - pause
    - pause:
    - weight: 100
  match:
    - users: [ann, bob]
    - {header: X-Beta, values: ["yes"]}
"""


ROLLING = MINIMAL + "strategy:\n  max_surge: 25%\n  max_unavailable: 1\n"


def _load(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> Spec:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return load_spec(path, overrides)


def test_defaults(tmp_path: Path) -> None:
    spec = _load(tmp_path, MINIMAL)
    assert spec.listen == "127.0.0.1:8080"
    assert spec.instances == 1
    assert spec.run.cwd == "."
    assert spec.run.env == {}
    assert spec.run.grace == 10.0
    assert (spec.health.path, spec.health.interval, spec.health.deadline) == ("/healthz", 1.0, 30.0)
    assert spec.routing.user_key.header == "X-User-Id"
    assert spec.strategy.kind == "rolling"
    assert spec.strategy.max_surge == Count(value=1)
    assert spec.strategy.max_unavailable == Count(value=0)
    assert spec.preview_listen() == "127.0.0.1:8081"


def test_full_spec(tmp_path: Path) -> None:
    spec = _load(tmp_path, FULL)
    assert spec.run.command == ["python3", "app.py", "--port", "{port}", "--workers", "2"]
    assert spec.run.env == {"APP_MODE": "prod", "DEBUG": "false", "RATIO": "0.5", "SLOT": "{slot}"}
    assert spec.run.grace == 0.5
    assert spec.health.deadline == 60.0
    assert spec.routing.drain_timeout == 45.0
    assert isinstance(spec.strategy, Canary)
    steps = spec.strategy.steps
    assert [s.weight for s in steps] == [10, None, None, 50, None, None, 100]
    assert [s.pause for s in steps] == [None, 30.0, None, None, "forever", "forever", None]
    assert steps[2].analysis is not None and steps[2].analysis.duration == 120.0
    assert spec.strategy.match[0].users == ["ann", "bob"]
    assert spec.preview_listen() == "127.0.0.1:9090"


def test_rolling_counts(tmp_path: Path) -> None:
    spec = _load(tmp_path, ROLLING)
    assert isinstance(spec.strategy, Rolling)
    assert spec.strategy.max_surge == Count(value=25, percent=True)
    assert spec.strategy.max_surge.resolve(4, round_up=True) == 1
    assert spec.strategy.max_unavailable == Count(value=1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), ("2", 2.0),
     ("0.25", 0.25), ("0", 0.0), ("' 10s '", 10.0)],
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    spec = _load(tmp_path, MINIMAL + f"health:\n  interval: {text}\n")
    assert spec.health.interval == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "count"),
    [("3", Count(value=3)), ("'2'", Count(value=2)),
     ("25%", Count(value=25, percent=True)), ("12.5%", Count(value=12.5, percent=True)),
     ("100%", Count(value=100, percent=True))],
)
def test_counts_and_percentages(tmp_path: Path, text: str, count: Count) -> None:
    spec = _load(tmp_path, MINIMAL + f"strategy:\n  max_surge: {text}\n")
    assert spec.strategy.max_surge == count


def test_zero_surge_with_some_unavailable(tmp_path: Path) -> None:
    text = MINIMAL + "strategy:\n  max_surge: 0\n  max_unavailable: 50%\n"
    spec = _load(tmp_path, text)
    assert (spec.strategy.max_surge, spec.strategy.max_unavailable) == (
        Count(value=0),
        Count(value=50, percent=True),
    )


def test_overrides(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        FULL,
        (
            "instances=5",
            "run.env.APP_MODE=dev",
            "run.env.NEW=1",
            "strategy.steps.0.weight=20",
            "strategy.steps.7.weight=100",
            "run.command=[python3, serve.py, '{port}']",
            "routing.user_key={header: X-Team}",
            "health.path=/ready",
        ),
    )
    assert spec.instances == 5
    assert spec.run.env["APP_MODE"] == "dev"
    assert spec.run.env["NEW"] == "1"
    assert spec.strategy.steps[0].weight == 20
    assert len(spec.strategy.steps) == 8
    assert spec.run.command == ["python3", "serve.py", "{port}"]
    assert (spec.routing.user_key.header, spec.routing.user_key.cookie) == ("X-Team", None)
    assert spec.health.path == "/ready"


def test_overrides_create_missing_sections(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        MINIMAL,
        ("strategy.kind=blue-green", "strategy.tests=[{http: /smoke}, {command: [./check]}]",
         "run.env.APP_MODE=dev", "strategy.auto_promote=false"),
    )
    assert spec.strategy.kind == "blue-green"
    assert spec.strategy.tests == [HttpTest(http="/smoke"), CommandTest(command=["./check"])]
    assert spec.run.env == {"APP_MODE": "dev"}
    assert spec.strategy.auto_promote is False


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = MINIMAL + "health: &h {interval: 2s}\nrouting:\n  <<: {drain_timeout: 5s}\n"
    spec = _load(tmp_path, text)
    assert spec.health.interval == 2.0
    assert spec.routing.drain_timeout == 5.0


def test_parse_spec_reads_text(tmp_path: Path) -> None:
    assert parse_spec(MINIMAL, "inline").service == "shop"


def test_dump_reads_back_to_the_same_spec(tmp_path: Path) -> None:
    spec = _load(tmp_path, FULL)
    text = dump_spec(spec)
    assert "grace: 500ms" in text
    assert "deadline: 1m" in text
    assert "max_surge: 25%" in dump_spec(_load(tmp_path, ROLLING))
    assert parse_spec(text, "dump") == spec
    short = dump_spec(spec, defaults=False)
    assert "interval" not in short and "router:" not in short
    assert parse_spec(short, "short") == spec
    assert yaml.safe_load(dump_spec(_load(tmp_path, MINIMAL), defaults=False)) == {
        "service": "shop",
        "run": {"command": ["python3", "app.py", "--port", "{port}"]},
    }


def test_json_schema_describes_every_field() -> None:
    schema = spec_json_schema()
    assert schema["title"] == "turnout.yaml"
    assert schema["required"] == ["service", "run"]
    assert schema["additionalProperties"] is False
    run = schema["$defs"]["Run"]["properties"]
    assert "never a shell" in run["command"]["description"]
    duration = run["grace"]
    assert {"type": "number", "minimum": 0} in duration["anyOf"]
    assert "description" in duration
    surge = schema["$defs"]["Rolling"]["properties"]["max_surge"]
    assert {"type": "integer", "minimum": 0} in surge["anyOf"]
    kinds = schema["$defs"]["Strategy"]["properties"]["kind"]["enum"]
    assert kinds == ["big-bang", "rolling", "blue-green", "canary", "feature-toggle"]
    step = schema["$defs"]["CanaryStep"]["anyOf"]
    assert {"const": "pause", "description": "wait for `turnout promote`"} in step
    for name, model in schema["$defs"].items():
        assert model.get("description"), f"{name} has no description"


SHAPES = {
    "ssh platform and router on a host": MINIMAL + (
        "platform: {kind: ssh, hosts: [web1, 'web2:2222'], user: deploy, instances_per_host: 2}\n"
        "router: {kind: builtin, host: web1}\n"),
    "adopted haproxy": MINIMAL + (
        "router: {kind: haproxy, adopt: {socket: /run/haproxy/admin.sock, backend: shop}}\n"),
    "toggle the app evaluates": MINIMAL + (
        "router: haproxy\nstrategy: {kind: feature-toggle, flag: f, evaluated_by: app}\n"
        "metrics: {kind: prometheus, url: 'http://127.0.0.1:9090',\n"
        "  requests: 'sum(r{cohort=\"{cohort}\"})', errors: 'sum(e{cohort=\"{cohort}\"})'}\n"),
    "names alone": MINIMAL + "router: haproxy\nplatform: local\nmetrics: router\n",
}


@pytest.mark.parametrize("text", [FULL, *SHAPES.values()], ids=["full", *SHAPES])
def test_every_valid_spec_is_valid_by_the_json_schema_editors_read(text: str) -> None:
    parse_spec(text)  # turnout reads it
    jsonschema.validate(yaml.safe_load(text), spec_json_schema())


@pytest.mark.parametrize("name", list(DEMO_STRATEGIES))
def test_the_demos_specs_are_valid_by_the_json_schema(tmp_path: Path, name: str) -> None:
    spec = yaml.safe_load(write_spec(tmp_path, 8080, router="haproxy").read_text())
    spec["strategy"] = DEMO_STRATEGIES[name]
    jsonschema.validate(spec, spec_json_schema())


def test_the_json_schema_refuses_a_field_no_router_has() -> None:
    spec = yaml.safe_load(MINIMAL + "router: {kind: haproxy, hots: web1}\n")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, spec_json_schema())


@given(st.floats(min_value=0, max_value=10_000_000, allow_nan=False, allow_infinity=False))
def test_format_duration_reads_back_to_the_millisecond(seconds: float) -> None:
    assert abs(parse_duration(format_duration(seconds)) - seconds) <= 0.0005 + seconds * 1e-12


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_dumped_durations_read_back_exactly(seconds: float) -> None:
    spec = parse_spec(MINIMAL, "minimal").model_copy(
        update={"run": parse_spec(MINIMAL, "m").run.model_copy(update={"grace": seconds})}
    )
    assert parse_spec(dump_spec(spec), "dump").run.grace == seconds


@given(st.integers(min_value=0, max_value=100_000), st.sampled_from(["ms", "s", "m", "h"]))
def test_whole_durations_round_trip_exactly(amount: int, unit: str) -> None:
    seconds = parse_duration(f"{amount}{unit}")
    assert seconds == amount * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    assert parse_duration(format_duration(seconds)) == seconds
