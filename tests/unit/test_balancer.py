"""The balancer's pure logic: bucket ranges, sticky movement, rules, cookies, fallbacks."""

from __future__ import annotations

from collections import Counter

from turnout.routers.proxy.balancer import (
    OUTLIER_MOST,
    Outliers,
    Plan,
    bucket_ends,
    bucket_of,
    parse_cookies,
)
from turnout.routers.table import BUCKETS, Backend, MatchRule, Pool, RoutingTable, UserKey


def pool(revision: str, weight: int, backends: int = 1) -> Pool:
    return Pool(
        revision=revision,
        version=revision,
        weight=weight,
        backends=tuple(
            Backend(id=f"{revision}-{i}", address=f"127.0.0.1:{9000 + i}") for i in range(backends)
        ),
    )


def test_bucket_ranges_follow_weights_and_cover_every_bucket() -> None:
    assert bucket_ends([10, 90]) == [1000, BUCKETS]
    assert bucket_ends([1, 1, 1]) == [3333, 6666, BUCKETS]
    assert bucket_ends([0, 5]) == [0, BUCKETS]
    assert bucket_ends([]) == []
    assert bucket_ends([0, 0]) == []


def test_bucket_of_is_murmur3_unsigned_mod_buckets() -> None:
    assert bucket_of("abc") == 3017643002 % BUCKETS
    assert bucket_of(b"abc") == bucket_of("abc")


def test_users_only_move_from_old_to_new_as_weight_grows() -> None:
    keys = [f"user-{i}".encode() for i in range(10_000)]
    previous: dict[bytes, str] | None = None
    for weight in (0, 1, 5, 10, 25, 50, 75, 99, 100):
        plan = Plan.compile(RoutingTable(pools=(pool("new", weight), pool("old", 100 - weight))))
        current = {k: plan.route({b"x-user-id": k}).revision for k in keys}  # type: ignore[union-attr]
        share = sum(v == "new" for v in current.values()) / len(keys)
        assert abs(share - weight / 100) < 0.02
        if previous is not None:
            assert all(current[k] == "new" for k in keys if previous[k] == "new")
        previous = current


def test_same_key_same_pool_and_keyless_requests_follow_weights() -> None:
    plan = Plan.compile(RoutingTable(pools=(pool("a", 20), pool("b", 80))))
    assert len({plan.route({b"x-user-id": b"u1"}).revision for _ in range(50)}) == 1  # type: ignore[union-attr]
    seen = Counter(plan.route({}).revision for _ in range(20_000))  # type: ignore[union-attr]
    assert abs(seen["a"] / 20_000 - 0.2) < 0.015


def test_pools_without_backends_or_weight_take_no_share() -> None:
    table = RoutingTable(pools=(pool("empty", 50, backends=0), pool("zero", 0), pool("b", 10)))
    plan = Plan.compile(table)
    assert {plan.route({}).revision for _ in range(200)} == {"b"}  # type: ignore[union-attr]
    assert Plan.compile(RoutingTable()).route({}) is None


def test_rules_win_in_order_and_skip_empty_pools() -> None:
    table = RoutingTable(
        pools=(pool("canary", 0), pool("stable", 100), pool("gone", 0, backends=0)),
        rules=(
            MatchRule(revision="gone", header="X-Beta", values=("1",)),
            MatchRule(revision="canary", header="X-Beta", values=("1",)),
            MatchRule(revision="canary", cookie="beta", values=("yes",)),
            MatchRule(revision="canary", users=("alice",)),
        ),
        user_key=UserKey(header="X-User-Id", cookie="uid"),
    )
    plan = Plan.compile(table)
    assert plan.wanted == {b"x-beta", b"x-user-id", b"cookie"}

    def revision(headers: dict[bytes, bytes]) -> str:
        chosen = plan.route(headers)
        assert chosen is not None
        return chosen.revision

    assert revision({b"x-beta": b"1"}) == "canary"
    assert revision({b"cookie": b"x=1; beta=yes"}) == "canary"
    assert revision({b"x-user-id": b"alice"}) == "canary"
    assert revision({b"cookie": b"uid=alice"}) == "canary"
    assert revision({b"x-beta": b"2", b"x-user-id": b"bob"}) == "stable"


def test_cookie_parsing_tolerates_spaces_quotes_and_junk() -> None:
    assert parse_cookies(b'a=1; b="two" ;junk; c=') == {"a": b"1", "b": b"two", "c": b""}


def test_preview_and_fallback_order() -> None:
    table = RoutingTable(pools=(pool("green", 0, 2), pool("blue", 100, 2)), preview="green")
    plan = Plan.compile(table)
    assert plan.preview is plan.pools["green"]
    order = [b.id for b in plan.fallbacks(plan.pools["blue"])]
    assert order == ["blue-0", "blue-1", "green-0", "green-1"]
    picks = Counter(plan.pools["blue"].pick().id for _ in range(10))  # type: ignore[union-attr]
    assert picks == {"blue-0": 5, "blue-1": 5}
    assert plan.addresses == {"127.0.0.1:9000", "127.0.0.1:9001"}


def test_a_backend_whose_connect_failed_is_passed_over_until_its_time_is_up() -> None:
    outliers = Outliers()
    table = RoutingTable(generation=1, pools=(pool("v1", 100, backends=3), pool("v2", 0, backends=1)))
    plan = Plan.compile(table, outliers.until)
    v1 = plan.pools["v1"]
    first = [b.address for b in v1.backends]
    outliers.failed(v1.backends[0])
    assert outliers.is_down(v1.backends[0])
    picked = Counter(v1.pick().address for _ in range(300))  # type: ignore[union-attr]
    assert picked[first[0]] == 0 and picked[first[1]] == picked[first[2]] == 150
    # A failed connect's retries try backends that are up first, the held one last.
    assert [b.address for b in plan.fallbacks(v1)][-1] == first[0]
    # Its time up, traffic tries it again; a success clears it.
    outliers.until[first[0]] = 0.0
    assert not outliers.is_down(v1.backends[0])
    assert first[0] in {v1.pick().address for _ in range(3)}  # type: ignore[union-attr]
    outliers.succeeded(v1.backends[0])
    assert first[0] not in outliers.until


def test_when_every_backend_is_held_down_they_are_tried_anyway_and_the_hold_grows() -> None:
    outliers = Outliers()
    plan = Plan.compile(RoutingTable(generation=1, pools=(pool("v1", 100, backends=2),)), outliers.until)
    v1 = plan.pools["v1"]
    for backend in v1.backends:
        outliers.failed(backend)
    assert v1.pick() is not None
    address = v1.backends[0].address
    held = [outliers.until[address]]
    for _ in range(8):
        outliers.failed(v1.backends[0])
        held.append(outliers.until[address])
    assert held == sorted(held)
    assert outliers.until[address] - outliers.until[v1.backends[1].address] <= OUTLIER_MOST


def test_a_host_that_did_not_answer_holds_every_backend_on_it() -> None:
    outliers = Outliers()
    table = RoutingTable(generation=1, pools=(pool("v1", 100, backends=3),))
    plan = Plan.compile(table, outliers.until)
    v1 = plan.pools["v1"]
    outliers.failed(v1.backends[0], whole_host=True)  # all three are on 127.0.0.1
    assert all(outliers.is_down(b) for b in v1.backends)
    outliers.succeeded(v1.backends[2])
    assert not any(outliers.is_down(b) for b in v1.backends)


def test_holds_on_backends_the_table_no_longer_has_are_forgotten() -> None:
    outliers = Outliers()
    old = Plan.compile(RoutingTable(generation=1, pools=(pool("v1", 100, backends=2),)), outliers.until)
    kept, gone = old.pools["v1"].backends  # ports 9000 and 9001
    outliers.failed(gone)
    outliers.failed(kept, whole_host=True)
    new = Plan.compile(RoutingTable(generation=2, pools=(pool("v2", 100, backends=1),)), outliers.until)
    outliers.retain(new.backends)  # v2's one backend: the same host, port 9000
    assert gone.address not in outliers.until and kept.host in outliers.until
    outliers.retain(frozenset())
    assert outliers.until == {} and new.pools["v2"].down is outliers.until  # still shared
