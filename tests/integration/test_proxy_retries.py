"""A retry on another revision never hides the failure of the first, in the builtin router.

A real proxy process routes `X-Canary: yes` requests to a canary pool beside a stable one
(upstreams on 127.0.0.1 in the test process). The canary answers a few requests, then
"crashes" (its listener and connections closed, its port refusing); the router retries each
canary request it can no longer connect to on the stable pool. Every client still gets its
200, and the counters say what happened: the canary's failed connects are its requests and
connection errors, the stable revision counts the answers it gave, and the requests of all
revisions add up to the attempts made. Once without flags (revision counters) and once with
a flag evaluated (the counters of each flag combination and revision).
"""

from __future__ import annotations

import pytest
from tests.integration.test_proxy import (  # fixtures are used by name
    Running,
    Upstream,
    pool,
    proxy,
    state_dir,
    ups,
    versions,
)

from turnout.routers.table import MatchRule, RoutingTable

__all__ = ["proxy", "state_dir", "ups"]
CANARY = {"X-Canary": "yes"}
ANSWERED, REFUSED, STABLE = 12, 40, 24  # canary answers, canary requests after its crash, others


@pytest.mark.parametrize("flags", [False, True], ids=["revisions", "flag-combinations"])
async def test_a_dead_canary_retried_on_stable_counts_its_failed_connects(
    proxy: Running, ups: list[Upstream], flags: bool
) -> None:
    stable = ups[0]
    canary = await Upstream("new").start()
    rules = (MatchRule(revision="new", header="X-Canary", values=("yes",)),)
    table = RoutingTable(generation=1, pools=(pool("new", 0, canary), pool("old", 100, stable)), rules=rules)
    try:
        await proxy.router.apply(table)
        if flags:
            doc = {"version": 2, "segments": [], "meta": {"revision": 1}, "features": [
                {"name": "checkout", "enabled": True, "strategies": [{"name": "default"}]}]}
            await proxy.router.set_flags(doc, evaluate=["checkout"], revision=1)
        assert await versions(proxy.url, ANSWERED, CANARY) == {"new": ANSWERED}
    finally:
        await canary.close()  # every canary instance is dead from here on
    assert await versions(proxy.url, REFUSED, CANARY) == {"old": REFUSED}  # each got its 200
    assert await versions(proxy.url, STABLE) == {"old": STABLE}

    stats = await proxy.router.stats()
    new, old = stats.revisions["new"], stats.revisions["old"]
    # the canary: its answers, then one failed attempt per request it could not take
    assert (new.requests, new.connection_errors, new.responses_5xx) == (ANSWERED + REFUSED, REFUSED, 0)
    assert sum(new.latency) == ANSWERED and new.router_responses == {}
    assert new.error_rate > 0.5
    # the stable revision: every answer it gave, and only those
    assert stable.requests == REFUSED + STABLE
    assert (old.requests, old.connection_errors, old.responses_5xx) == (REFUSED + STABLE, 0, 0)
    assert sum(old.latency) == REFUSED + STABLE
    attempts = ANSWERED + 2 * REFUSED + STABLE
    assert sum(c.requests for c in stats.revisions.values()) == attempts
    if flags:  # the flag's cohort sees the same attempts, the failed ones included
        on = stats.cohorts["checkout:on"]
        assert (on.requests, on.connection_errors) == (attempts, REFUSED)
        assert stats.cohorts["checkout:off"].requests == 0
