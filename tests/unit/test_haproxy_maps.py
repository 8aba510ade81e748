"""The HAProxy Lua's map entries, read back the way the Lua reads them, and its stats text."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest

from turnout.routers.base import LATENCY_BOUNDS
from turnout.routers.haproxy import maps
from turnout.routers.proxy.balancer import Plan
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, UserKey

BACKENDS = {"new": "web_p0", "mid": "web_p1", "old": "web_p2", "idle": "web_p3"}


def pool(revision: str, weight: int, backends: int = 1) -> Pool:
    return Pool(
        revision=revision, version=revision, weight=weight,
        backends=tuple(Backend(id=f"{revision}-{i}", address=f"127.0.0.1:{9000 + i}")
                       for i in range(backends)),
    )


def items(value: str) -> list[tuple[str, bytes]]:
    """An entry's items as the Lua reads them: comma separated, kind letter, percent-decoded."""
    return [(item[0], unquote_to_bytes(item[1:])) for item in value.split(",") if item]


def read(found: dict[str, str], service: str) -> dict[str, object]:
    """What the Lua compiles from the entries of `service`."""
    pools = [part.split("=") for part in found.get(f"{service}/pools", "").split(",") if part]
    rules = []
    for i in range(int(found.get(f"{service}/rules", "0"))):
        head = dict(items(found[f"{service}/rule/{i}"]))
        members = [m for j in range(int(head["n"])) for m in items(found[f"{service}/rule/{i}/{j}"])]
        rules.append({"backend": head["b"], "header": head.get("h"), "cookie": head.get("c"),
                      "values": {v for k, v in members if k == "v"},
                      "users": {v for k, v in members if k == "u"}})
    return {"ends": [int(end) for end, _ in pools], "backends": [unquote_to_bytes(b) for _, b in pools],
            "user": dict(items(found.get(f"{service}/user", ""))), "rules": rules,
            "preview": found.get(f"{service}/preview")}


def test_pools_take_the_builtin_routers_bucket_ranges() -> None:
    table = RoutingTable(generation=7, pools=(pool("new", 10), pool("mid", 0), pool("idle", 50, backends=0),
                                              pool("old", 30)))
    found = maps.entries("web", table, BACKENDS)
    plan = Plan.compile(table)
    seen = read(found, "web")
    assert seen["ends"] == plan.ends == [2500, 10000]
    assert seen["backends"] == [BACKENDS[p.revision].encode() for p in plan.ranged] == [b"web_p0", b"web_p2"]
    assert seen["user"] == {"h": b"x-user-id"}
    assert found["web"].startswith("7.")


def test_no_pool_with_backends_and_weight_leaves_no_ranges() -> None:
    table = RoutingTable(pools=(pool("new", 0), pool("idle", 100, backends=0)),
                         user_key=UserKey(header=None, cookie="sid"))
    found = maps.entries("web", table, BACKENDS)
    assert "web/pools" not in found
    assert read(found, "web")["user"] == {"c": b"sid"}


def test_rules_keep_their_order_and_skip_revisions_without_backends() -> None:
    odd = ("a b", "x,y", "k=v", "50%", "é ü", "", "\t")
    table = RoutingTable(
        pools=(pool("new", 10), pool("old", 90), pool("idle", 0, backends=0)),
        rules=(MatchRule(revision="idle", users=("u1",)),
               MatchRule(revision="new", header="X-Canary", values=odd),
               MatchRule(revision="gone", header="X-Gone", values=("1",)),
               MatchRule(revision="old", cookie="beta", values=("on",), users=("ü-user", "bob")),
               ),
        preview="new",
    )
    seen = read(maps.entries("web", table, BACKENDS), "web")
    assert seen["rules"] == [
        {"backend": b"web_p0", "header": b"x-canary", "cookie": None,
         "values": {v.encode() for v in odd}, "users": set()},
        {"backend": b"web_p2", "header": None, "cookie": b"beta",
         "values": {b"on"}, "users": {"ü-user".encode(), b"bob"}},
    ]
    assert seen["preview"] == "web_p0"


def test_keys_and_values_are_single_words_of_bounded_size() -> None:
    users = tuple(f"user {i} with, commas = and % signs é" for i in range(2000))
    table = RoutingTable(pools=(pool("new", 1), pool("old", 1)),
                         rules=(MatchRule(revision="new", users=users),))
    found = maps.entries("web", table, BACKENDS)
    for key, value in found.items():
        assert re.fullmatch(r"[A-Za-z0-9_.~%,=/-]+", key) and re.fullmatch(r"[A-Za-z0-9_.~%,=/-]+", value)
        assert len(value) <= maps.CHUNK
    assert len([k for k in found if k.startswith("web/rule/0/")]) > 1
    assert read(found, "web")["rules"][0]["users"] == {u.encode() for u in users}  # type: ignore[index]
    lines = maps.map_text(found).splitlines()
    assert lines == sorted(lines) and len(lines) == len(found)
    assert all(len(line.split(" ")) == 2 for line in lines)


def test_the_version_changes_with_any_entry() -> None:
    base = RoutingTable(generation=3, pools=(pool("new", 10), pool("old", 90)))
    first = maps.entries("web", base, BACKENDS)
    assert maps.entries("web", base, BACKENDS) == first
    moved_table = base.model_copy(update={"pools": (pool("new", 20), pool("old", 80))})
    moved = maps.entries("web", moved_table, BACKENDS)
    swapped = maps.entries("web", base, {**BACKENDS, "new": "web_p3"})
    versions = {first["web"], moved["web"], swapped["web"]}
    assert len(versions) == 3 and all(v.startswith("3.") for v in versions)


def test_a_revision_with_backends_needs_a_pool_backend() -> None:
    table = RoutingTable(pools=(pool("new", 10), pool("old", 90)))
    with pytest.raises(KeyError):
        maps.entries("web", table, {"new": "web_p0"})
    with pytest.raises(ValueError, match="service name"):
        maps.entries("a/b", table, BACKENDS)


def test_merge_replaces_only_the_services_own_entries() -> None:
    table = RoutingTable(pools=(pool("new", 10), pool("old", 90)))
    web, api = maps.entries("web", table, BACKENDS), maps.entries("web.api", table, BACKENDS)
    both = maps.merge(web, "web.api", api)
    assert both == {**web, **api}
    fewer = maps.entries("web", RoutingTable(pools=(pool("old", 1),)), BACKENDS)
    assert maps.merge(both, "web", fewer) == {**api, **fewer}
    assert maps.owned("web", "web/pools") and not maps.owned("web", "web.api/pools")


def test_configuration_lines() -> None:
    assert maps.lua_global_lines("/srv/turnout/router/") == [
        "setenv TURNOUT_MAP '/srv/turnout/router/maps/turnout.map'",
        "lua-load '/srv/turnout/router/turnout.lua'",
    ]
    with pytest.raises(ValueError):
        maps.lua_global_lines("/it's/here")
    assert maps.frontend_lines("web")[0] == (
        "http-request set-var(txn.turnout_backend) req.hdrs,lua.turnout_route(web)")
    assert "lua.turnout_preview(web)" in maps.frontend_lines("web", preview=True)[0]
    assert maps.backend_lines("web_p1")[0].endswith("lua.turnout_observe(web_p1)")
    assert "local BOUNDS_US" in maps.lua_source()


def test_parse_stats_reads_the_histograms() -> None:
    bounds = " ".join(str(round(b * 1e6)) for b in LATENCY_BOUNDS)
    ones, zeros = " ".join(["1"] * 26), " ".join(["0"] * 25)
    text = f"# turnout latency bounds_us {bounds}\nweb_p0 {ones}\nweb_p1 {zeros} 7\n\n"
    assert maps.parse_stats(text) == {"web_p0": [1] * 26, "web_p1": [0] * 25 + [7]}
    assert maps.parse_stats(f"# turnout latency bounds_us {bounds}\n") == {}
    with pytest.raises(ValueError, match="bounds"):
        maps.parse_stats("# turnout latency bounds_us 1000 2000\n")
    with pytest.raises(ValueError, match="does not parse"):
        maps.parse_stats(f"# turnout latency bounds_us {bounds}\nweb_p0 1 2 3\n")
    with pytest.raises(ValueError, match="not an answer"):
        maps.parse_stats("Unknown command\n")
