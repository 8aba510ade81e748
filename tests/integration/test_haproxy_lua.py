"""turnout's Lua in a real HAProxy on 127.0.0.1: the pool it picks for a user key is the builtin
router's pick, at several splits swapped in through the runtime API without a reload; match
rules send their users to their revision; answers are timed into per-backend histograms.

HAProxy runs in the foreground from a minimal configuration written here: the Lua lines of
`maps`, one frontend (and a preview one) and four pool backends. A request for `/pool` is
answered by the backend itself with its name; other paths go to a test upstream.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from tests.integration.test_proxy import Upstream, free_port
from tests.system import missing

from turnout.routers.base import LATENCY_BOUNDS
from turnout.routers.haproxy import maps
from turnout.routers.proxy.balancer import Plan, bucket_of
from turnout.routers.table import BUCKETS, Backend, MatchRule, Pool, RoutingTable, UserKey

SERVICE = "web"
BACKENDS = tuple(f"{SERVICE}_p{i}" for i in range(4))


class Haproxy:
    """A foreground HAProxy loading turnout.lua, its runtime API and its two listeners."""

    def __init__(self, folder: Path, upstream: Upstream) -> None:
        self.folder = folder
        self.port, self.preview_port = free_port(), free_port()
        self.admin = folder / "admin.sock"
        self.map_path = folder / maps.MAP_FOLDER / maps.MAP_FILE
        self.upstream = upstream
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        indent = "\n    ".join
        backends = "".join(
            f"backend {name}\n    {indent(maps.backend_lines(name))}\n"
            f"    http-response set-header X-Pool {name}\n"
            f"    http-request return status 200 content-type text/plain string {name} if {{ path /pool }}\n"
            f"    server s0 {self.upstream.address}\n"
            for name in BACKENDS
        )
        return (
            f"global\n    stats socket {self.admin} mode 600 level admin\n"
            f"    {indent(maps.lua_global_lines(str(self.folder)))}\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n"
            "    timeout server 10s\n"
            f"frontend {SERVICE}\n    bind 127.0.0.1:{self.port}\n"
            f"    {indent(maps.frontend_lines(SERVICE))}\n"
            f"frontend {SERVICE}_preview\n    bind 127.0.0.1:{self.preview_port}\n"
            f"    {indent(maps.frontend_lines(SERVICE, preview=True))}\n{backends}"
        )

    async def start(self, table: RoutingTable) -> None:
        (self.folder / maps.MAP_FOLDER).mkdir()
        (self.folder / maps.LUA_FILE).write_text(maps.lua_source())
        self.map_path.write_text(maps.map_text(entries(table)))
        (self.folder / "haproxy.cfg").write_text(self.config())
        with (self.folder / "haproxy.log").open("wb") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.folder / "haproxy.cfg")],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not await self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"HAProxy did not start:\n{(self.folder / 'haproxy.log').read_text()}")
            await asyncio.sleep(0.05)

    async def _ready(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        return self.admin.exists()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    async def command(self, line: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.admin))
        try:
            writer.write(line.encode() + b"\n")
            return (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()

    async def prepare(self, table: RoutingTable) -> str:
        """The table's entries added as a new version of the map, not committed yet."""
        answer = await self.command(f"prepare map {self.map_path}")
        version = re.search(r"New version created: (\d+)", answer)
        assert version is not None, answer
        for key, value in entries(table).items():
            assert not (await self.command(f"add map @{version[1]} {self.map_path} {key} {value}")).strip()
        return version[1]

    async def commit(self, version: str) -> None:
        assert not (await self.command(f"commit map @{version} {self.map_path}")).strip()

    async def swap(self, table: RoutingTable) -> None:
        await self.commit(await self.prepare(table))


def entries(table: RoutingTable) -> dict[str, str]:
    """Pool backends in table order: the first pool's revision gets web_p0, and so on."""
    return maps.entries(SERVICE, table, {p.revision: BACKENDS[i] for i, p in enumerate(table.pools)})


def builtin(table: RoutingTable, requests: list[Mapping[bytes, bytes]]) -> list[str | None]:
    """The pool backend the builtin router picks for each request, given its headers as the
    builtin router keeps them (lowercase names)."""
    plan = Plan.compile(table)
    names = {p.revision: BACKENDS[i] for i, p in enumerate(table.pools)}
    picks = [plan.route(headers) for headers in requests]
    return [None if picked is None else names[picked.revision] for picked in picks]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream("app").start()
    yield server
    await server.close()


@pytest.fixture
async def haproxy(upstream: Upstream) -> AsyncIterator[Haproxy]:
    if shutil.which("haproxy") is None:
        missing("HAProxy is not installed (no haproxy on PATH): install Debian's haproxy package")
    folder = Path(tempfile.mkdtemp(prefix="thl-"))  # short: a UNIX socket path fits 107 bytes
    made = Haproxy(folder, upstream)
    try:
        await made.start(RoutingTable(pools=(pool("new", 1), pool("old", 1))))
        yield made
    finally:
        made.stop()
        shutil.rmtree(folder, ignore_errors=True)


def pool(revision: str, weight: int, backends: int = 1) -> Pool:
    return Pool(revision=revision, version=revision, weight=weight,
                backends=tuple(Backend(id=f"{revision}-{i}", address="127.0.0.1:9") for i in range(backends)))


async def ask(port: int, requests: list[list[tuple[bytes, bytes]]], path: bytes = b"/pool",
              lanes: int = 8, host: bool = True) -> list[tuple[int, str]]:
    """Each request's (status, X-Pool or body) for GETs of `path` with the given header lines,
    over `lanes` keep-alive connections."""
    answers: list[tuple[int, str]] = [(0, "")] * len(requests)

    async def lane(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in range(first, len(requests), lanes):
                lines = b"".join(b"%s: %s\r\n" % header for header in requests[index])
                writer.write(b"GET %s HTTP/1.1\r\n%s%s\r\n" % (path, b"Host: t\r\n" if host else b"", lines))
                head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
                fields = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                answers[index] = (int(head.split(" ")[1]), fields.get("x-pool") or body.decode())
                if fields.get("connection") == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(lane(i) for i in range(lanes)))
    return answers


def random_keys(count: int, seed: int) -> list[bytes]:
    """User keys of every length modulo 4 (the hash's tail), ASCII and not, spaces inside."""
    rng = random.Random(seed)
    alphabet = "abcXYZ019-_.:;,=/+@ ~!\"'é中ü€ß🙂"
    keys = []
    for i in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(i % 4 + 4 * rng.randrange(12))).strip()
        keys.append((text or "k").encode())
    return keys


SPLITS = [
    (pool("new", 10), pool("old", 90)),
    (pool("new", 50), pool("old", 50)),
    (pool("new", 1), pool("mid", 2), pool("old", 3)),
    (pool("new", 25), pool("mid", 0), pool("gone", 40, backends=0), pool("old", 75)),
    (pool("new", 100),),
]


def edge_keys(ends: list[int]) -> list[bytes]:
    """Keys whose buckets lie on either side of each boundary between two pools."""
    wanted = {bucket for end in ends if end < BUCKETS for bucket in (end - 1, end)}
    found: dict[int, bytes] = {}
    if not wanted:
        return []
    for n in range(2_000_000):  # about BUCKETS tries per bucket wanted
        key = b"edge-%d" % n
        if bucket_of(key) in wanted:
            found.setdefault(bucket_of(key), key)
            if len(found) == len(wanted):
                return list(found.values())
    raise AssertionError(f"no keys found for buckets {sorted(wanted - set(found))}")


async def test_a_user_key_lands_where_the_builtin_router_sends_it_at_every_split(haproxy: Haproxy) -> None:
    drawn = random_keys(1200, seed=10)
    assert {len(k) % 4 for k in drawn} == {0, 1, 2, 3} and any(max(k) > 127 for k in drawn)
    for generation, pools in enumerate(SPLITS, start=1):
        table = RoutingTable(generation=generation, pools=pools)
        keys = drawn + edge_keys(Plan.compile(table).ends)
        await haproxy.swap(table)
        answers = await ask(haproxy.port, [[(b"X-User-Id", key)] for key in keys])
        expected = builtin(table, [{b"x-user-id": key} for key in keys])
        assert [status for status, _ in answers] == [200] * len(keys)
        mismatched = [(k, got, want) for k, (_, got), want in zip(keys, answers, expected, strict=True)
                      if got != want]
        assert not mismatched, f"split {generation}: {len(mismatched)} keys differ, e.g. {mismatched[:3]}"
        shares = Counter(got for _, got in answers)
        assert len(shares) == len([p for p in pools if p.backends and p.weight])


async def test_long_user_keys_land_where_the_builtin_router_sends_them(haproxy: Haproxy) -> None:
    # the Lua hashes keys of up to 128 bytes with code compiled per length, longer ones in a loop
    rng = random.Random(15)
    keys = [bytes(rng.choice(b"abcXYZ019-_.") for _ in range(n)) for n in range(100, 301) for _ in range(2)]
    table = RoutingTable(generation=9, pools=tuple(pool(name, 1) for name in ("a", "b", "c", "d")))
    await haproxy.swap(table)
    answers = await ask(haproxy.port, [[(b"X-User-Id", key)] for key in keys])
    assert [got for _, got in answers] == builtin(table, [{b"x-user-id": key} for key in keys])
    assert len({got for _, got in answers}) == 4


async def test_a_prepared_map_routes_nothing_until_committed_and_no_reload_happens(haproxy: Haproxy) -> None:
    assert haproxy.proc is not None
    keys = random_keys(300, seed=11)
    everyone_old = RoutingTable(generation=1, pools=(pool("new", 0), pool("old", 1)))
    await haproxy.swap(everyone_old)
    version = await haproxy.prepare(RoutingTable(generation=2, pools=(pool("new", 1), pool("old", 0))))
    before = await ask(haproxy.port, [[(b"X-User-Id", k)] for k in keys])
    await haproxy.commit(version)
    after = await ask(haproxy.port, [[(b"X-User-Id", k)] for k in keys])
    assert Counter(pool for _, pool in before) == {"web_p1": len(keys)}
    assert Counter(pool for _, pool in after) == {"web_p0": len(keys)}
    assert haproxy.proc.poll() is None  # the same process all along: nothing was reloaded


async def test_matched_users_all_go_to_their_revision_and_the_rest_as_the_builtin(haproxy: Haproxy) -> None:
    # keys a cookie carries whole (no ; " = or space in them)
    whole = dict.fromkeys(k for k in random_keys(2000, seed=12) if not re.search(rb'[;"= ]', k))
    chosen = list(whole)[:40]
    table = RoutingTable(
        generation=3,
        pools=(pool("new", 10), pool("old", 90), pool("idle", 0, backends=0)),
        rules=(MatchRule(revision="idle", users=tuple(k.decode() for k in chosen)),  # no backends: skipped
               MatchRule(revision="new", header="X-Canary", values=("yes", "ja ja", "")),
               MatchRule(revision="new", cookie="beta", values=("on",)),
               MatchRule(revision="old", users=tuple(k.decode() for k in chosen[:20])),
               MatchRule(revision="new", users=tuple(k.decode() for k in chosen))),
        user_key=UserKey(header="X-User-Id", cookie="uid"),
    )
    await haproxy.swap(table)
    others = random_keys(400, seed=13)
    requests: list[list[tuple[bytes, bytes]]] = (
        [[(b"X-User-Id", k), (b"X-Canary", b"yes")] for k in others[:100]]
        + [[(b"X-User-Id", k), (b"x-canary", b"ja ja")] for k in others[100:150]]
        + [[(b"X-User-Id", k), (b"X-Canary", b"")] for k in others[150:160]]
        + [[(b"Cookie", b'a=1; beta="on"; uid=' + k)] for k in others[160:200]]
        + [[(b"X-User-Id", k)] for k in chosen]
        + [[(b"Cookie", b"uid=" + k)] for k in chosen]
        + [[(b"X-User-Id", k), (b"X-Canary", b"no"), (b"Cookie", b"beta=off")] for k in others[200:]]
        + [[(b"X-User-Id", b"first"), (b"X-User-Id", k)] for k in others[:50]]  # the last one counts
        + [[(b"Cookie", b"uid=" + k + b"; uid=second"), (b"X-User-Id", b"")] for k in list(whole)[40:90]]
    )
    answers = await ask(haproxy.port, requests)
    expected = builtin(table, [as_builtin_sees(headers) for headers in requests])
    assert [got for _, got in answers] == expected
    assert Counter(got for _, got in answers[:200]) == {"web_p0": 200}
    assert Counter(got for _, got in answers[200:240]) == {"web_p1": 20, "web_p0": 20}
    assert Counter(got for _, got in answers[240:280]) == {"web_p1": 20, "web_p0": 20}
    assert set(expected[280:]) == {"web_p0", "web_p1"}


async def test_a_header_on_the_first_line_or_named_inside_a_value_is_read_as_the_builtin(
        haproxy: Haproxy) -> None:
    table = RoutingTable(generation=10, pools=(pool("new", 0), pool("old", 1)),
                         rules=(MatchRule(revision="new", header="X-Canary", values=("yes",)),
                                MatchRule(revision="new", users=("u1",))),
                         user_key=UserKey(header="X-User-Id"))
    await haproxy.swap(table)
    host = (b"Host", b"t")
    requests = [
        [(b"X-Canary", b"yes"), host],  # the first line
        [(b"X-Canary", b"no"), (b"X-Canary", b"yes"), host],  # the last one counts
        [(b"X-Canary", b"yes"), (b"X-Canary", b"no"), host],
        [(b"X-Note", b"x-canary: yes"), host],  # only inside another header's value
        [(b"X-Note", b"a\tx-canary: yes"), (b"X-User-Id", b"u2"), host],
        [(b"X-User-Id", b"u1"), host],  # the user key on the first line
        [(b"X-Note", b"x-user-id: u1"), host],
        [host, (b"X-Canary", b"yes")],
    ]
    answers = await ask(haproxy.port, requests, host=False)
    assert [got for _, got in answers] == ["web_p0", "web_p0", "web_p1", "web_p1", "web_p1",
                                           "web_p0", "web_p1", "web_p0"]
    assert [got for _, got in answers] == builtin(table, [as_builtin_sees(h) for h in requests])


def as_builtin_sees(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Header lines as the builtin router keeps them: lowercase names, the last value of each."""
    return {name.lower(): value for name, value in headers}


async def test_without_a_user_key_pools_are_picked_at_random_by_weight(haproxy: Haproxy) -> None:
    await haproxy.swap(RoutingTable(generation=4, pools=(pool("new", 20), pool("old", 80))))
    answers = await ask(haproxy.port, [[] for _ in range(2000)])
    share = Counter(got for _, got in answers)["web_p0"] / 2000
    assert 0.15 < share < 0.25


async def test_no_pool_to_take_a_request_is_a_503_and_preview_serves_its_revision(haproxy: Haproxy) -> None:
    await haproxy.swap(RoutingTable(generation=5, pools=(pool("new", 0), pool("old", 0, backends=0))))
    assert {status for status, _ in await ask(haproxy.port, [[(b"X-User-Id", b"a")]] * 8)} == {503}
    await haproxy.swap(RoutingTable(generation=6, pools=(pool("new", 0), pool("old", 1)), preview="new"))
    assert {got for _, got in await ask(haproxy.preview_port, [[(b"X-User-Id", b"a")]] * 8)} == {"web_p0"}
    assert {got for _, got in await ask(haproxy.port, [[(b"X-User-Id", b"a")]] * 8)} == {"web_p1"}
    await haproxy.swap(RoutingTable(generation=7, pools=(pool("new", 0), pool("old", 1))))
    assert {status for status, _ in await ask(haproxy.preview_port, [[]] * 8)} == {503}


async def test_answers_are_timed_into_their_backends_histogram(haproxy: Haproxy) -> None:
    await haproxy.swap(RoutingTable(generation=8, pools=(pool("new", 30), pool("old", 70))))
    assert maps.parse_stats(await haproxy.command(maps.STATS_COMMAND)) == {}
    keys = random_keys(300, seed=14)
    fast = await ask(haproxy.port, [[(b"X-User-Id", k)] for k in keys], path=b"/")
    slow = await ask(haproxy.port, [[(b"X-User-Id", k)] for k in keys[:8]], path=b"/sleep?s=0.2")
    histograms = maps.parse_stats(await haproxy.command(maps.STATS_COMMAND))
    sent = Counter(got for _, got in fast + slow)
    assert {name: sum(counts) for name, counts in histograms.items()} == sent
    above = LATENCY_BOUNDS.index(0.2) + 1  # 0.2 s and a little more: the 0.3 s bucket or later
    slow_sent = Counter(got for _, got in slow)
    slow_counted = {name: sum(counts[above:]) for name, counts in histograms.items()}
    assert {name: count for name, count in slow_counted.items() if count} == slow_sent
    assert sum(sum(counts[:above]) for counts in histograms.values()) == len(fast)
