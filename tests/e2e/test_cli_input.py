"""Bad input through the real CLI: exit 2, file, line and field named, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """\
service: shop
listen: 127.0.0.1:18080
instances: 2
run:
  command: [python3, app.py, --port, "{port}"]
health: {path: /healthz, interval: 1s, timeout: 2s, deadline: 30s}
strategy:
  kind: rolling
"""

# (what to replace in GOOD, with what, the line and field the message must name)
BAD = [
    ("service: shop", "service: Shop!", 1, "service"),
    ("service: shop\n", "", 1, "service"),
    ("instances: 2", "instances: 0", 3, "instances"),
    ("instances: 2", "instances: many", 3, "instances"),
    ("instances: 2", "instance: 2", 3, "instance"),
    ("listen: 127.0.0.1:18080", "listen: localhost", 2, "listen"),
    ("listen: 127.0.0.1:18080", "listen: 127.0.0.1:99999", 2, "listen"),
    ('  command: [python3, app.py, --port, "{port}"]', "  command: []", 5, "run.command"),
    ('  command: [python3, app.py, --port, "{port}"]', '  command: "python3 app.py"', 5, "run.command"),
    ('  command: [python3, app.py, --port, "{port}"]', '  command: [app, "{prot}"]', 5, "run.command"),
    ("interval: 1s", "interval: soon", 6, "health.interval"),
    ("interval: 1s", "interval: -1s", 6, "health.interval"),
    ("path: /healthz", "path: healthz", 6, "health.path"),
    ("timeout: 2s", "timeout: 60s", 6, "health.timeout"),
    ("  kind: rolling", "  kind: sideways", 8, "strategy.kind"),
    ("  kind: rolling", "  kind: rolling\n  max_surge: 0\n  max_unavailable: 0", 10,
     "strategy.max_unavailable"),
    ("  kind: rolling", "  kind: rolling\n  max_surge: lots", 9, "strategy.max_surge"),
    ("  kind: rolling", "  kind: canary\n  steps: [{weight: 50}, {weight: 10}]", 9, "strategy.steps"),
    ("  kind: rolling", "  kind: canary\n  steps: [{weight: 10, pause: 1s}]", 9, "strategy.steps.0"),
    ("instances: 2", "instances: 2\ninstances: 3", 4, "instances"),
    ("run:", "run: [", 6, "invalid YAML"),
]


def turnout(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", *args], check=False, cwd=folder, capture_output=True,
        text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(("old", "new", "line", "field"), BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_spec_is_refused_with_exit_2(
    tmp_path: Path, old: str, new: str, line: int, field: str
) -> None:
    assert old in GOOD
    (tmp_path / "turnout.yaml").write_text(GOOD.replace(old, new, 1))
    result = turnout(tmp_path, "deploy", "v1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"turnout.yaml:{line}" in result.stderr, result.stderr
    assert field in result.stderr
    assert not (tmp_path / ".turnout").exists(), "nothing may start on invalid input"


def test_bad_set_override_is_refused(tmp_path: Path) -> None:
    (tmp_path / "turnout.yaml").write_text(GOOD)
    result = turnout(tmp_path, "deploy", "v1", "--set", "instances=zero")
    assert result.returncode == 2 and "instances" in result.stderr and "--set" in result.stderr
    assert not (tmp_path / ".turnout").exists()


BAD_ARGS = [
    ["deploy"], ["deploy", "v1", "--strategy", "sideways"], ["rollback", "a", "b"],
    ["deploy", "v1", "-f", "missing.yaml"], ["history", "-n", "0"], ["nonsense"],
]


@pytest.mark.parametrize("args", BAD_ARGS)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "turnout.yaml").write_text(GOOD)
    result = turnout(tmp_path, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".turnout").exists()


def test_schema_is_json_schema(tmp_path: Path) -> None:
    import json

    result = turnout(tmp_path, "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "service" in schema["properties"] and "run" in schema["required"]
