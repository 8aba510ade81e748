"""Raising a rollout keeps every user it had, for turnout and for the official Python SDK.

A flag is created from a file with a flexibleRollout strategy of its own stickiness and
groupId at 20%; then `turnout flags rollout checkout 33` and `... 40` run through the
real CLI, and 50% goes through the running server's admin API. After each step a real
`turnout server` serves the store, a fresh `UnleashClient` (yggdrasil inside) reads it,
and both it and `turnout.flags` answer for 5,000 user ids: they must agree on every one,
and nobody enabled at one step may be disabled at the next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.sdk.python_sdk import served_state, unleash_answers
from tests.e2e.sdk.server_proc import ServerProcess
from turnout.flags import FlagState, evaluate
from turnout.flags.store import FlagStore

USERS = 5_000
SPEC = "service: shop\nrun:\n  command: [python3, app.py, --port, '{port}']\n"
FLAG = """\
name: checkout
enabled: true
strategies:
  - name: flexibleRollout
    parameters: {rollout: 20, stickiness: userId, groupId: checkout-2024}
"""


def turnout(folder: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    done = subprocess.run([sys.executable, "-m", "turnout", *args], check=False, cwd=folder,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, ServerProcess, str, str]]:
    (tmp_path / "turnout.yaml").write_text(SPEC)
    (tmp_path / "flag.yaml").write_text(FLAG)
    turnout(tmp_path, "flags", "create", "-f", "flag.yaml")
    url = f"sqlite:///{tmp_path / '.turnout' / 'state.db'}"
    with FlagStore.open(url) as store:
        token = store.create_token("e2e-rollout", "client")
        admin = store.create_token("e2e-rollout-admin", "admin")
    server = ServerProcess.start(url, cwd=tmp_path)
    try:
        yield tmp_path, server, token, admin
    finally:
        assert server.stop() == 0


def test_raising_a_rollout_keeps_its_users_for_turnout_and_the_python_sdk(
    served: tuple[Path, ServerProcess, str, str], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder, server, token, admin = served
    cases = [("checkout", {"userId": f"user-{i}"}) for i in range(USERS)]
    enabled: dict[int, set[int]] = {}
    for revision, percent in ((1, 20), (2, 33), (3, 40), (4, 50)):
        if percent in (33, 40):
            out = turnout(folder, "flags", "rollout", "checkout", str(percent))
            assert f"rolled out to {percent}%" in out
        elif percent == 50:
            changed = httpx.post(f"{server.url}/api/admin/flags/checkout/rollout",
                                 json={"percent": percent}, headers={"Authorization": admin})
            assert changed.status_code == 200, changed.text
        doc = served_state(server.url, token, revision=revision)
        params = doc["features"][0]["strategies"][0]["parameters"]
        assert params == {"rollout": str(percent), "stickiness": "userId",
                          "groupId": "checkout-2024"}
        state = FlagState.from_json(doc)
        ours = [evaluate(state, name, ctx).enabled for name, ctx in cases]
        theirs = unleash_answers(server.url, token, cases,
                                 tmp_path_factory.mktemp(f"sdk-cache-{percent}"))
        differ = [cases[i][1]["userId"] for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                  if a != b]
        print(f"rollout {percent}%: python UnleashClient agrees on {USERS - len(differ)}/{USERS} "
              f"users, {sum(theirs)} enabled")
        assert not differ, f"{len(differ)} users differ, e.g. {differ[:5]}"
        enabled[percent] = {i for i, on in enumerate(theirs) if on}
        assert abs(len(enabled[percent]) / USERS - percent / 100) < 0.03
    dropped = {f"{a}->{b}%": len(enabled[a] - enabled[b]) for a, b in ((20, 33), (33, 40), (40, 50))}
    print(f"users dropped: {dropped} (of {len(enabled[33])} enabled at 33%)")
    assert not any(dropped.values())
