"""An adopted HAProxy, without HAProxy: the spec's `router.adopt` and what it refuses, the
weights that split traffic between revisions, and the user's file rewritten only in turnout's
backend. (tests/integration/test_haproxy_adopt.py runs it against a real HAProxy.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout import wiring
from turnout.analysis.judge import Criteria, ThresholdJudge, Verdict, Window
from turnout.errors import SpecError
from turnout.plan import RevisionSubject
from turnout.routers.base import Counters
from turnout.routers.haproxy import section
from turnout.routers.haproxy.adopted import MAX_WEIGHT, AdoptedHaproxy, spread
from turnout.routers.haproxy.router import HaproxyRouter
from turnout.routers.haproxy.runtime import ADMIN_FORCED_DRAIN, ADMIN_FORCED_MAINT, ServerState
from turnout.routers.table import Backend, Pool, RoutingTable
from turnout.statedir import StateDir

BASE = """\
service: shop
run:
  command: [app, "{port}"]
"""
ADOPT = "router:\n  kind: haproxy\n  adopt: {socket: /run/haproxy/admin.sock, backend: shop}\n"


def load(folder: Path, text: str) -> list[str]:
    """The problems of a spec file (none: it loads)."""
    path = folder / "turnout.yaml"
    path.write_text(text)
    try:
        wiring.load_spec(path)
    except SpecError as exc:
        assert exc.exit_code == 2
        return [line.replace(str(path), "turnout.yaml") for line in exc.problems]
    return []


def test_adopt_is_an_haproxy_setting(tmp_path: Path) -> None:
    builtin = ADOPT.replace("kind: haproxy", "kind: builtin")
    assert load(tmp_path, BASE + builtin) == [
        "turnout.yaml:6: router.adopt: the router 'builtin' cannot adopt a running one: only "
        "`kind: haproxy` can"]
    relative = ADOPT.replace("/run/haproxy/admin.sock", "admin.sock")
    assert "router.adopt.socket: must be an absolute path" in load(tmp_path, BASE + relative)[0]
    long = ADOPT.replace("/run/haproxy/admin.sock", "/" + "s" * 107)
    assert "holds at most 107 bytes" in load(tmp_path, BASE + long)[0]


def test_an_adopted_haproxy_refuses_what_needs_more_than_weights_at_each_field(tmp_path: Path) -> None:
    text = BASE + ADOPT + """\
routing:
  user_key: {header: X-Account}
  preview_listen: 127.0.0.1:9999
  timeouts: {connect: 2s}
strategy:
  kind: canary
  steps: [{weight: 10}, {analysis: {duration: 30s, max_p99: 200ms}}, {weight: 100}]
  match: [{header: X-Beta, values: ["1"]}]
"""
    adopted = "the router 'haproxy' (adopted) cannot"
    assert load(tmp_path, text) == [
        f"turnout.yaml:8: routing.user_key: {adopted} keep each user on one revision by the user key",
        f"turnout.yaml:9: routing.preview_listen: {adopted} serve a revision on a preview address",
        "turnout.yaml:10: routing.timeouts: an adopted HAProxy keeps its own configuration's; "
        "turnout changes only the servers of router.adopt.backend",
        f"turnout.yaml:13: strategy.steps.1.analysis.max_p99: {adopted} time answers, which a p99 "
        "limit and a comparing gate need (a Prometheus `metrics.latency` query can)",
        f"turnout.yaml:14: strategy.match: {adopted} send chosen users to a revision",
    ]
    toggle = BASE + ADOPT + "strategy:\n  kind: feature-toggle\n  flag: checkout\n"
    assert load(tmp_path, toggle) == [
        f"turnout.yaml:8: strategy.kind: {adopted} evaluate flags for each request; set "
        "`strategy.evaluated_by: app` to have the app's SDK evaluate it"]
    comparing = BASE + ADOPT + ("strategy:\n  kind: canary\n  steps: [{weight: 50}]\n"
                                "  gate: {max_error_rate_increase: 1%}\n")
    assert [p.split(": ")[1] for p in load(tmp_path, comparing)] == [
        "strategy.gate.max_error_rate_increase"]


def test_a_weighted_canary_loads_and_builds_the_adopted_router(tmp_path: Path) -> None:
    canary = ("strategy:\n  kind: canary\n  steps: [{weight: 10}, {weight: 100}]\n"
              "  gate: {max_error_rate: 2%, max_p99: 300ms}\n")
    prometheus = ("metrics: {kind: prometheus, url: 'http://127.0.0.1:9090', requests: 'sum(r)', "
                  "errors: 'sum(e)', latency: 'sum by (le) (l)'}\n")
    assert load(tmp_path, BASE + "router: haproxy\n" + canary) == []  # turnout's HAProxy times answers
    assert load(tmp_path, BASE + ADOPT + canary + prometheus) == []  # so does the app's Prometheus
    assert load(tmp_path, BASE + ADOPT + canary.replace(", max_p99: 300ms", "")) == []
    path = tmp_path / "turnout.yaml"
    state = StateDir.beside(tmp_path)
    router = wiring.build_router(wiring.load_spec(path), state)
    assert isinstance(router, AdoptedHaproxy)
    assert (str(router.socket), router.backend, router.config_path) == (
        "/run/haproxy/admin.sock", "shop", None)
    assert router.slots_needed == 2 and router.capabilities == AdoptedHaproxy.capabilities
    path.write_text(BASE + "router: haproxy\n")
    assert isinstance(wiring.build_router(wiring.load_spec(path), state), HaproxyRouter)
    assert not state.path.exists()  # building starts nothing


def test_the_default_p99_limit_is_not_judged_without_timed_answers() -> None:
    """What the README says: an adopted HAProxy's counters hold no latency, so a gate the spec
    leaves at its default p99 limit judges error rates alone."""
    criteria = Criteria(max_error_rate=0.01, max_p99=1.0, min_requests=20)
    subject = RevisionSubject(revision="v2-abcdef12")
    clean = Window(subject, Counters(requests=100), 10.0)
    failing = Window(subject, Counters(requests=100, responses_5xx=2, connection_errors=1), 10.0)
    passed = ThresholdJudge().judge(clean, None, criteria)
    assert passed.verdict is Verdict.SUCCESSFUL
    assert passed.reason == "100 requests, error rate 0.00%, no answer timed: p99 not judged"
    assert ThresholdJudge().judge(failing, None, criteria).verdict is Verdict.FAILED


def pool(revision: str, weight: int, backends: int) -> Pool:
    made = tuple(Backend(id=f"{revision}-{i}", address=f"127.0.0.1:{9000 + i}") for i in range(backends))
    return Pool(revision=revision, version=revision, weight=weight, backends=made)


@pytest.mark.parametrize("split", [
    ((10, 1), (90, 4)), ((1, 1), (99, 1)), ((50, 3), (50, 2)), ((33, 2), (33, 5), (34, 1)),
    ((100, 8), (0, 8)), ((3, 7), (97, 1)),
])
def test_spread_gives_each_revision_its_share_within_half_a_point(
    split: tuple[tuple[int, int], ...],
) -> None:
    table = RoutingTable(pools=tuple(pool(f"r{i}", w, n) for i, (w, n) in enumerate(split)))
    slots = {b.id: f"s{j}" for j, b in enumerate(b for p in table.pools for b in p.backends)}
    weights = spread(table, slots)
    assert set(weights) == set(slots.values())
    assert all(0 <= w <= MAX_WEIGHT for w in weights.values()) and max(weights.values()) == MAX_WEIGHT
    total = sum(weights.values())
    for p in table.pools:
        got = sum(weights[slots[b.id]] for b in p.backends)
        assert abs(100 * got / total - table.share(p.revision)) < 0.5, (p.revision, weights)
        assert (got > 0) == (p.weight > 0)


def test_spread_of_a_table_without_weight_is_all_zero() -> None:
    table = RoutingTable(pools=(pool("a", 0, 2),))
    assert spread(table, {"a-0": "s0", "a-1": "s1"}) == {"s0": 0, "s1": 0}


USER_CONFIG = (
    "# the user's own file\r\n"
    "global\r\n"
    "\tstats socket /run/haproxy/admin.sock mode 660 level admin\r\n"
    "\r\n"
    "frontend web\r\n"
    "    bind :80\r\n"
    "    use_backend shop if { path_beg /shop }\r\n"
    "    default_backend static\r\n"
    "\r\n"
    "backend shop   # turnout's\r\n"
    "    balance roundrobin\r\n"
    "    server s0 127.0.0.1:1 disabled check inter 2s   # slot\r\n"
    "\tserver  s1  127.0.0.1:1  weight 7 disabled\r\n"
    "\r\n"
    "backend static\r\n"
    "    server s0 10.0.0.9:8080 weight 3 check\r\n"
    "    server s1 10.0.0.10:8080 disabled\r\n"
)


def state(server: str, host: str, port: int, weight: int, admin: int = 0) -> ServerState:
    return ServerState(backend="shop", server=server, host=host, port=port, operational=2,
                       admin=admin, weight=weight)


def test_the_file_changes_only_in_the_servers_of_turnouts_backend() -> None:
    servers = {"s0": state("s0", "10.1.2.3", 8001, 256),
               "s1": state("s1", "10.1.2.4", 8002, 12, ADMIN_FORCED_DRAIN)}
    after = section.rewrite(USER_CONFIG, "shop", servers)
    assert section.outside(after, "shop") == section.outside(USER_CONFIG, "shop")
    changed = [(a, b) for a, b in zip(USER_CONFIG.splitlines(True), after.splitlines(True),
                                      strict=True) if a != b]
    assert changed == [
        ("    server s0 127.0.0.1:1 disabled check inter 2s   # slot\r\n",
         "    server s0 10.1.2.3:8001 check inter 2s weight 256   # slot\r\n"),
        ("\tserver  s1  127.0.0.1:1  weight 7 disabled\r\n",
         "\tserver s1 10.1.2.4:8002 weight 12 disabled\r\n"),
    ]
    freed = {"s0": state("s0", "10.1.2.3", 8001, 256, ADMIN_FORCED_MAINT)}
    assert "    server s0 10.1.2.3:8001 check inter 2s weight 256 disabled   # slot\r\n" in (
        section.rewrite(after, "shop", freed))
    assert section.rewrite(after, "shop", servers) == after  # stable


def test_a_file_that_is_not_the_running_one_is_refused() -> None:
    assert section.server_lines(USER_CONFIG, "shop") == {"s0": 11, "s1": 12}
    with pytest.raises(ValueError, match="no `server` line for s2 in backend shop"):
        section.rewrite(USER_CONFIG, "shop", {"s2": state("s2", "10.0.0.1", 1, 1)})
    with pytest.raises(ValueError, match="no `backend cart` section"):
        section.server_lines(USER_CONFIG, "cart")
    with pytest.raises(ValueError, match="more than one `backend shop` section"):
        section.server_lines(USER_CONFIG + "listen shop\n    bind :81\n", "shop")


def test_the_file_is_replaced_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(USER_CONFIG)
    path.chmod(0o640)
    link = tmp_path / "current.cfg"
    link.symlink_to(path)
    section.replace_file(link, b"new\n")
    assert link.is_symlink() and path.read_bytes() == b"new\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.cfg", "haproxy.cfg"]
