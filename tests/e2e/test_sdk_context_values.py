"""Awkward context values and operand shapes: turnout answers as the official Python SDK does.

A real `turnout server` serves flags with every operator (numbers, dates, semantic
versions, CIDR blocks, string operators with and without case folding, lists, address
and user strategies, a custom stickiness), each stored through `FlagStore`'s validation.
The official `UnleashClient` (yggdrasil inside) reads the served document once; then
`turnout.flags` and the client evaluate every flag for contexts holding awkward values in
every place they are read (a property, `remoteAddress`, `currentTime`, `userId`): a table
of the known traps (whitespace, `_`, signs, exponents, inf and nan, dates with and
without a zone or with long fractions, addresses with spaces, zones or CIDR suffixes),
then values hypothesis generates. Every answer must agree.

Definitions the SDK would read otherwise (a string operator with a singular `value`, a
scalar one with `values`) are refused on every path into the store: the CLI, the admin
API of the running server, and the store itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.sdk.server_proc import ServerProcess
from turnout.flags import FlagState, evaluate
from turnout.flags.store import FlagError, FlagStore

NUMBERS = ["6", " 6", "6 ", "\t6", "6\n", "1_000", "+6", "-6", "6.", ".6", "+.6", "1e3", "1E+3",
           "1e", "e3", "inf", "-inf", "Infinity", "INF", "nan", "NaN", "0x10", "1,000", "",
           "0.30000000000000004", "1e400", "-0", "٦"]
DATES = ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z",
         "2024-01-01t00:00:00z", "2024-01-01T00:00:00.123456789Z", "2024-01-01T00:00:00.1234567891Z",
         "2024-06-01T12:30:00.5+02:00", "2024-06-01T12:30:00+0200", "2024-06-01T10:30:00.5 UTC",
         "2024-06-01T10:30:00.5utc", " 2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z ",
         "2024-1-1T0:0:0Z", "2023-12-31T23:59:60Z", "2024-02-30T00:00:00Z",
         "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+23:59", "2024-01-01T00:00:00\u221205:00",
         "2024-01-01", "2024-01-01T00:00Z", "+2024-01-01T00:00:00Z", "2024-01-01T00:00:00.Z"]
SEMVERS = ["1.2.3", " 1.2.3", "1.2.3 ", "v1.2.3", "01.2.3", "1.2.3-rc.1", "1.2.3-01", "1.2.3-0a",
           "1.0.0-rc.1+build.01", "18446744073709551615.0.0", "18446744073709551616.0.0", "1.2",
           "1.2.3-", "1.0.0-RC.1"]
ADDRESSES = ["10.0.0.1", " 10.0.0.1", "10.0.0.1 ", "010.0.0.1", "10.0.0.256", "10.0.0", "::1",
             " ::1", "::ffff:10.0.0.1", "fe80::1%eth0", "fe80::1", "FE80::1", "[::1]",
             "192.168.1.1", "192.168.7.7", "10.0.0.1/8", "1:2:3:4:5:6:7::", "::1.2.3.4"]
STRINGS = ["ab", "xAB", "\u03c3", "\u03a3", "\u03c2", "\u0130", "a", " a", "say \"hi\"", "c:\\", "c:\\d"]
TABLE = NUMBERS + DATES + SEMVERS + ADDRESSES + STRINGS
PLACES = ("x", "remoteAddress", "currentTime", "userId")


def _constraint(name: str, op: str, **operand: Any) -> dict[str, Any]:
    return {"contextName": name, "operator": op, **operand}


def _flags() -> list[dict[str, Any]]:
    """One flag per operator and operand; a few inverted; all as a person would write them."""
    checks: list[dict[str, Any]] = []
    for op in ("NUM_EQ", "NUM_GT", "NUM_LT", "NUM_GTE", "NUM_LTE"):
        checks += [_constraint("x", op, value=v) for v in ("6", "-2.5", "1e3", "0.3", " 6 ")]
    checks.append(_constraint("x", "NUM_EQ", value="6", values=[]))  # an empty leftover: fine
    for op in ("DATE_AFTER", "DATE_BEFORE"):
        for v in ("2024-01-01T00:00:00Z", "2024-06-01T12:30:00.500+02:00", "2023-12-31T23:59:59.999Z"):
            checks += [_constraint("x", op, value=v), _constraint("currentTime", op, value=v)]
    for op in ("SEMVER_EQ", "SEMVER_GT", "SEMVER_LT", "SEMVER_GTE", "SEMVER_LTE"):
        checks += [_constraint("x", op, value=v) for v in ("1.2.3", "1.0.0-rc.1")]
    for values in (["10.0.0.0/8"], ["fe80::/10", "::1"], ["192.168.0.0/255.255.0.0"], ["10.0.0.1"]):
        checks += [_constraint("remoteAddress", "IN_CIDR", values=values),
                   _constraint("x", "IN_CIDR", values=values)]
    for op in ("STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH"):
        for fold in (False, True):
            checks.append(_constraint("x", op, values=["ab", "\u03a3", "\"h"], caseInsensitive=fold))
    checks += [_constraint("x", "IN", values=["a", " a", "c:\\d"], value=""),
               _constraint("x", "NOT_IN", values=["a"]), _constraint("userId", "IN", values=["6"])]
    flags = [{"name": f"c{i:03d}", "enabled": True,
              "strategies": [{"name": "default", "constraints": [c]}]} for i, c in enumerate(checks)]
    inverted = [{**f, "name": f"not-{f['name']}", "strategies": [
        {"name": "default", "constraints": [{**f["strategies"][0]["constraints"][0], "inverted": True}]}]}
        for f in flags[::4]]
    others = [
        {"name": "by-address", "strategies": [{"name": "remoteAddress",
                                               "parameters": {"IPs": "10.0.0.0/8, 192.168.1.1,::1"}}]},
        {"name": "by-user", "strategies": [{"name": "userWithId", "parameters": {"userIds": "6, ab"}}]},
        {"name": "sticky-x", "strategies": [{"name": "flexibleRollout", "parameters": {
            "rollout": "50", "stickiness": "x", "groupId": "awkward"}}]},
    ]
    return flags + inverted + [{**f, "enabled": True} for f in others]


def _contexts(value: str) -> list[dict[str, Any]]:
    """`value` in each place a flag reads it (and every other place left out)."""
    out: list[dict[str, Any]] = []
    for place in PLACES:
        ctx: dict[str, Any] = {"properties": {}}
        if place == "x":
            ctx["properties"]["x"] = value
        else:
            ctx[place] = value
        out.append(ctx)
    return out


@dataclass
class Served:
    server: ServerProcess
    admin_token: str
    names: list[str]
    state: FlagState
    client: Any

    def disagreements(self, values: list[str]) -> tuple[int, list[str]]:
        total, differ = 0, []
        for value in values:
            for ctx in _contexts(value):
                for name in self.names:
                    total += 1
                    ours = evaluate(self.state, name, ctx).enabled
                    theirs = bool(self.client.is_enabled(name, ctx))
                    if ours != theirs:
                        differ.append(f"{name} {ctx!r}: turnout {ours}, UnleashClient {theirs}")
        return total, differ


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from UnleashClient import UnleashClient

    folder = tmp_path_factory.mktemp("awkward")
    db = f"sqlite:///{folder / 'state.db'}"
    with FlagStore.open(db) as store:
        names = [store.create(f, who="e2e").name for f in _flags()]
        token = store.create_token("e2e-awkward", "client")
        admin = store.create_token("e2e-awkward-admin", "admin")
    server = ServerProcess.start(db)
    client = UnleashClient(url=f"{server.url}/api", app_name="turnout-e2e-awkward",
                           custom_headers={"Authorization": token}, disable_metrics=True,
                           disable_registration=True, refresh_interval=3600,
                           cache_directory=str(folder / "sdk-cache"))
    try:
        doc = httpx.get(f"{server.url}/api/client/features", headers={"Authorization": token}).json()
        client.initialize_client()
        assert client.is_initialized
        yield Served(server, admin, names, FlagState.from_json(doc), client)
    finally:
        client.destroy()
        assert server.stop() == 0


def test_the_table_of_awkward_values_is_answered_alike(served: Served) -> None:
    total, differ = served.disagreements(TABLE)
    enabled = sum(bool(served.client.is_enabled(n, c)) for v in TABLE for c in _contexts(v)
                  for n in served.names)
    print(f"awkward table: python UnleashClient agrees on {total - len(differ)}/{total} "
          f"evaluations ({len(TABLE)} values x {len(PLACES)} places x {len(served.names)} flags, "
          f"{enabled} enabled)")
    assert not differ, f"{len(differ)} disagreements, e.g.\n" + "\n".join(differ[:10])
    assert enabled > total // 20  # the table reaches enabled answers, not only refusals


def _mutated(seed: str, edits: list[tuple[int, str, int]]) -> str:
    chars = list(seed)
    for where, char, kind in edits:
        i = where % (len(chars) + 1)
        if kind == 0:
            chars.insert(i, char)
        elif chars:
            del chars[min(i, len(chars) - 1)]
            if kind == 2:
                chars.insert(min(i, len(chars)), char)
    return "".join(chars)


_NOISE = "0123456789+-.:eE_ TtZz/%\t\u00a0\u2212UCinfa:f"
awkward_values = st.one_of(
    st.sampled_from(TABLE),
    st.text(alphabet=_NOISE, max_size=14),
    st.builds(_mutated, st.sampled_from(TABLE),
              st.lists(st.tuples(st.integers(0, 40), st.sampled_from(_NOISE), st.integers(0, 2)),
                       min_size=1, max_size=3)),
)

def test_generated_awkward_values_are_answered_alike(served: Served) -> None:
    runs: list[int] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
              derandomize=True, database=None)
    @given(values=st.lists(awkward_values, min_size=1, max_size=4))
    def agree(values: list[str]) -> None:
        total, differ = served.disagreements(values)
        runs.append(total)
        assert not differ, "\n".join(differ[:10])

    agree()
    print(f"generated values: python UnleashClient agrees on {sum(runs)}/{sum(runs)} evaluations "
          f"over {len(runs)} hypothesis examples")
    assert sum(runs) > 50_000


MISREAD = [
    ("STR_CONTAINS", {"value": "beta"}, "value"), ("STR_STARTS_WITH", {"value": "beta"}, "value"),
    ("STR_ENDS_WITH", {"value": ".io"}, "value"), ("IN", {"value": "eu"}, "value"),
    ("NOT_IN", {"value": "eu"}, "value"), ("IN_CIDR", {"value": "10.0.0.0/8"}, "value"),
    ("NUM_EQ", {"values": ["5"]}, "values"), ("REGEX", {"values": ["^a"]}, "values"),
    ("DATE_AFTER", {"value": "2030-01-01T00:00:00"}, "value"),
]


@pytest.mark.parametrize(("op", "operand", "field"), MISREAD, ids=[m[0] for m in MISREAD])
def test_a_definition_the_sdk_reads_otherwise_is_refused_on_every_path(
    served: Served, tmp_path: Path, op: str, operand: dict[str, Any], field: str,
) -> None:
    bad = {"name": "misread", "enabled": True, "strategies": [
        {"name": "default", "constraints": [_constraint("region", op, **operand)]}]}
    where = f"strategies.0.constraints.0.{field}"
    admin = {"Authorization": served.admin_token}
    created = httpx.post(f"{served.server.url}/api/admin/flags", json=bad, headers=admin)
    assert created.status_code == 400, created.text
    assert any(p.startswith(f"{where}: ") for p in created.json()["problems"]), created.text
    (tmp_path / "turnout.yaml").write_text("service: shop\nrun:\n  command: [app]\n")
    (tmp_path / "flag.json").write_text(json.dumps(bad))
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_DATABASE_URL"}
    cli = subprocess.run([sys.executable, "-m", "turnout", "flags", "create", "-f", "flag.json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert cli.returncode == 2 and f"flag.json: {where}: " in cli.stderr, cli.stderr
    with FlagStore.open(f"sqlite:///{tmp_path / 'elsewhere.db'}") as store:
        store.create({"name": "misread", "enabled": True}, who="e2e")
        with pytest.raises(FlagError, match=where):
            store.update("misread", bad, who="e2e")
        assert store.flag("misread") is not None and store.revision() == 1
