"""What every kind of test may ask for: the throwaway PostgreSQL server (`tests.pg`), the
throwaway Prometheus server (`tests.prom`) and the test hosts (`tests.hosts.fixtures`: the
fleet is made only by a test that asks for it).

Under pytest-xdist (the parallel pass), the tests are also ordered so that every worker
starts on its share of the end-to-end tests (the long ones, a module's together), and the
short tests come after them: `--dist worksteal` first hands each worker a run of consecutive
tests, then lets an idle worker take half of a busy one's queue from its end, so short tests
left at the ends even the workers out, where a long test met late would hold up the pass.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.pg", "tests.prom", "tests.hosts.fixtures"]


def is_long(item: pytest.Item) -> bool:
    return item.nodeid.startswith("tests/e2e/")


def worker_shares(total: int, workers: int) -> list[int]:
    """How many tests xdist's work stealing hands each worker at first (in turn, each the
    tests left divided by the workers left)."""
    shares = []
    for left in range(workers, 0, -1):
        shares.append((total - sum(shares)) // left)
    return shares


def long_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """`items` as each worker's first share: a part of the long tests (whole modules, so a
    module's fixtures are made once; each module to the worker with the fewest so far), then
    short ones to fill it (the last share also takes whatever is left)."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        if is_long(item):
            modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    parts: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for tests in modules.values():
        min(parts, key=len).extend(tests)
    short = [i for i in items if not is_long(i)]
    ordered: list[pytest.Item] = []
    for mine, share in zip(parts, worker_shares(len(items), workers), strict=True):
        fill = max(0, share - len(mine))
        ordered += mine + short[:fill]
        short = short[fill:]
    return ordered + short


@pytest.hookimpl(trylast=True)  # after `-m` has deselected, so the shares are xdist's
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        items[:] = long_first(items, workers)
