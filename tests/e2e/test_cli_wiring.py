"""The router and platform a spec names, through the real CLI: shorthand or object, and an
unknown kind refused with exit 2 at its line, naming the known kinds, with nothing started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = """\
service: shop
listen: 127.0.0.1:18090
run:
  command: [python3, app.py, --port, "{port}"]
"""


def turnout(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout", *args], check=False, cwd=folder,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("tail", "line", "problem"), [
    ("router: traefik\n", 5, "router.kind: unknown router 'traefik'; known: builtin, haproxy"),
    ("router:\n  kind: envoy\n", 6, "router.kind: unknown router 'envoy'; known: builtin"),
    ("platform: {kind: k8s}\n", 5, "platform.kind: unknown platform 'k8s'; known: local, ssh"),
])
def test_an_unknown_kind_is_refused_with_exit_2_and_nothing_starts(
    tmp_path: Path, tail: str, line: int, problem: str
) -> None:
    (tmp_path / "turnout.yaml").write_text(SPEC + tail)
    for command in (["deploy", "v1"], ["status"], ["down"]):
        result = turnout(tmp_path, *command)
        assert result.returncode == 2, result.stderr
        assert f"turnout.yaml:{line}: {problem}" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / ".turnout").exists()


def test_the_shorthand_and_the_object_name_the_same_router(tmp_path: Path) -> None:
    (tmp_path / "turnout.yaml").write_text(SPEC + "router: {kind: builtin}\nplatform: local\n")
    result = turnout(tmp_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["service"] == "shop"
    assert status["router"]["running"] is False  # built from the spec, not started by a status
