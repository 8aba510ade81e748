"""`turnout flags` through the real CLI: changes, output, exit codes, nothing changed on bad input."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turnout.flags.store import FlagStore
from turnout.routers.builtin import BuiltinRouter

SPEC = "service: shop\nrun:\n  command: [python3, app.py, --port, '{port}']\n"

FLAGS = """\
- name: checkout
  enabled: true
  strategies:
    - name: flexibleRollout
      parameters: {rollout: 20}
- name: search
  description: new search page
"""


def turnout(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "turnout", *args], check=False, cwd=folder,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**base, **(env or {})})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def state_of(folder: Path) -> dict[str, Any]:
    with FlagStore.open(f"sqlite:///{folder / '.turnout' / 'state.db'}") as store:
        return store.state()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "turnout.yaml").write_text(SPEC)
    (tmp_path / "flags.yaml").write_text(FLAGS)
    return tmp_path


def test_create_list_change_show_history_archive(folder: Path) -> None:
    out = ok(turnout(folder, "flags", "create", "-f", "flags.yaml"))
    assert "checkout: created (version 1, on, rollout 20%)" in out and "search: created" in out
    assert ok(turnout(folder, "flags", "rollout", "checkout", "50", "--stickiness", "userId"))
    assert "users alice,bob" in ok(turnout(folder, "flags", "target", "checkout", "alice", "bob"))
    assert "search: enabled" in ok(turnout(folder, "flags", "enable", "search"))
    ok(turnout(folder, "flags", "disable", "checkout"))
    lines = ok(turnout(folder, "flags", "list")).splitlines()
    assert lines[0].split()[:3] == ["checkout", "off", "v4"] and "rollout 50%" in lines[0]
    assert lines[1].split()[:3] == ["search", "on", "v2"]
    shown = json.loads(ok(turnout(folder, "flags", "show", "checkout", "--json")))
    assert shown["version"] == 4
    assert shown["definition"]["strategies"][0]["parameters"] == {
        "rollout": "50", "stickiness": "userId", "groupId": "checkout"}
    assert "description: new search page" in ok(turnout(folder, "flags", "show", "search"))
    history = json.loads(ok(turnout(folder, "flags", "history", "checkout", "--json")))
    user = history[0]["who"]
    assert user.startswith("cli:") and len(user) > 4
    assert [h["action"] for h in history] == ["create", "rollout", "target", "disable"]
    assert "archived" in ok(turnout(folder, "flags", "archive", "search"))
    assert [f["name"] for f in state_of(folder)["features"]] == ["checkout"]
    listed = json.loads(ok(turnout(folder, "flags", "list", "--archived", "--json")))
    assert [f["name"] for f in listed] == ["search"]


BAD_FILES = [
    ("name: checkout\nstrategies: [{name: flexibleRollout, parameters: {rollout: 150}}]\n",
     "strategies.0.parameters.rollout"),
    ("- {name: fine}\n- {name: bad, strategies: [{name: default, constraints: "
     "[{contextName: v, operator: REGEX, value: '('}]}]}\n",
     "1.strategies.0.constraints.0.value"),
    ("name: checkout\nenabled: [\n", "flags.yaml:3"),
    ("- {name: twice}\n- {name: twice}\n", "defined twice"),
    ("- {name: fine}\n- {name: other, strategies: [{name: default, segments: [4]}]}\n",
     "1.strategies.0.segments.0: no segment with id 4"),
]


@pytest.mark.parametrize(("text", "where"), BAD_FILES,
                         ids=["rollout", "one-of-a-list", "yaml", "twice", "segment"])
def test_an_invalid_file_is_refused_and_nothing_is_created(folder: Path, text: str, where: str) -> None:
    (folder / "flags.yaml").write_text(text)
    refused(turnout(folder, "flags", "create", "-f", "flags.yaml"), "flags.yaml", where)
    assert state_of(folder)["features"] == [] and state_of(folder)["meta"]["revision"] == 0


def test_bad_changes_exit_2_and_change_nothing(folder: Path) -> None:
    ok(turnout(folder, "flags", "create", "-f", "flags.yaml"))
    before = state_of(folder)
    refused(turnout(folder, "flags", "enable", "nope"), "no flag named 'nope'")
    refused(turnout(folder, "flags", "create", "-f", "flags.yaml"), "already exist")
    refused(turnout(folder, "flags", "rollout", "checkout", "150"), "PERCENT")
    (folder / "bad.yaml").write_text("enabled: sometimes\n")
    refused(turnout(folder, "flags", "update", "checkout", "-f", "bad.yaml"), "bad.yaml: enabled:")
    refused(turnout(folder, "flags", "create", "-f", "missing.yaml"), "missing.yaml")
    assert state_of(folder) == before


def test_tokens_and_segments(folder: Path) -> None:
    secret = ok(turnout(folder, "flags", "token", "create", "sdk", "--kind", "client")).strip()
    assert secret.startswith("client:")
    with FlagStore.open(f"sqlite:///{folder / '.turnout' / 'state.db'}") as store:
        token = store.check_token(secret)
    assert token is not None and (token.name, token.kind) == ("sdk", "client")
    (folder / "segment.yaml").write_text(
        "name: beta\nconstraints: [{contextName: region, operator: IN, values: [eu]}]\n")
    saved = ok(turnout(folder, "flags", "segment", "create", "-f", "segment.yaml"))
    assert "segment 1 (beta): saved" in saved
    assert state_of(folder)["segments"][0]["name"] == "beta"


def test_spec_option_database_url_and_router_push(folder: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""\
        import json, sys, types
        push = types.ModuleType("turnout.flags.push")
        def push_to_router(spec, state):  # the spec file the command was given
            (spec.parent / "pushed.json").write_text(json.dumps(state))
        push.push_to_router = push_to_router
        sys.modules["turnout.flags.push"] = push
    """))
    url = f"sqlite:///{elsewhere / 'flags.db'}"
    spec = str(folder / "turnout.yaml")
    ok(turnout(elsewhere, "flags", "-f", spec, "create", "-f", str(folder / "flags.yaml"),
               env={"TURNOUT_DATABASE_URL": url, "PYTHONPATH": str(hook)}))
    pushed = json.loads((folder / "pushed.json").read_text())
    assert [f["name"] for f in pushed["features"]] == ["checkout", "search"]
    assert pushed["meta"]["revision"] == 2
    assert not (folder / ".turnout" / "state.db").exists()
    with FlagStore.open(url) as store:
        assert [f.name for f in store.flags()] == ["checkout", "search"]
    refused(turnout(elsewhere, "flags", "list"), "turnout.yaml")


@pytest.fixture
async def routed() -> AsyncIterator[tuple[Path, BuiltinRouter]]:
    """A spec folder (short path: unix sockets) whose builtin router really runs."""
    folder = Path(tempfile.mkdtemp(prefix="tfc-"))
    (folder / "turnout.yaml").write_text(SPEC)
    (folder / "flags.yaml").write_text(FLAGS)
    router = BuiltinRouter(folder / ".turnout" / "router", listen="127.0.0.1:0",
                           preview_listen=None)
    await router.ensure_running()
    try:
        yield folder, router
    finally:
        await router.stop()
        await router.aclose()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_change_the_router_refuses_exits_1_saying_the_store_has_it(
    routed: tuple[Path, BuiltinRouter],
) -> None:
    folder, router = routed
    # the router holds flag revision 50, fed from another state database than this one
    other = {"version": 2, "features": [], "segments": [], "meta": {"revision": 50}}
    await router.set_flags(other, evaluate=["checkout"], header="X-Turnout-Flags", revision=50)
    result = await asyncio.to_thread(turnout, folder, "flags", "create", "-f", "flags.yaml")
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    message = " ".join(result.stderr.split())
    for words in ("the flag store has the change (revision 2)", "refused it",
                  "holds flag revision 50", "TURNOUT_DATABASE_URL", "flags.json", "turnout deploy"):
        assert words in message, message
    assert "Traceback" not in result.stderr
    assert [f["name"] for f in state_of(folder)["features"]] == ["checkout", "search"]
    assert (await router.flags())["state"] == other
    again = await asyncio.to_thread(turnout, folder, "flags", "push")
    assert again.returncode == 1 and "holds flag revision 50" in " ".join(again.stderr.split())
    # what the message says to do: stop the router, delete its flags, start it again
    await router.stop()
    (folder / ".turnout" / "router" / "flags.json").unlink()
    await router.ensure_running()
    assert "flag revision 2" in ok(await asyncio.to_thread(turnout, folder, "flags", "push"))
    assert (await router.flags())["revision"] == 2
    ok(await asyncio.to_thread(turnout, folder, "flags", "enable", "search"))
    settings = await router.flags()
    assert settings["revision"] == 3
    assert [f["enabled"] for f in settings["state"]["features"]] == [True, True]


async def test_a_router_that_cannot_take_the_state_exits_1_and_says_what_to_do(
    routed: tuple[Path, BuiltinRouter],
) -> None:
    folder, router = routed
    ok(await asyncio.to_thread(turnout, folder, "flags", "create", "-f", "flags.yaml"))
    assert (await router.flags())["revision"] == 2
    # a router that stops answering (SIGSTOP of its supervisor and worker) until the CLI gives up
    worker = int(str((await router.health())["pid"]))
    supervisor = router.pid()
    assert supervisor is not None
    for pid in (supervisor, worker):
        os.kill(pid, signal.SIGSTOP)
    try:
        result = await asyncio.to_thread(turnout, folder, "flags", "disable", "checkout")
    finally:
        for pid in (worker, supervisor):
            os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    message = " ".join(result.stderr.split())
    for words in ("the flag store has the change (revision 3)", "did not take it", "timed out",
                  "proxy.log", "`turnout flags push`"):
        assert words in message, message
    assert state_of(folder)["meta"]["revision"] == 3
    ok(await asyncio.to_thread(turnout, folder, "flags", "push"))
    assert (await router.flags())["revision"] == 3
