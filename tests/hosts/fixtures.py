"""Fixtures of the test hosts: one fleet of four real hosts per session, reset before each test
(a plugin of `tests/conftest.py`, so the platform contract suite can use them too).

The hosts need root (a private Docker daemon, debootstrap); without it the tests that use
them skip and say so. As root a failing build fails the tests loudly. The image is cached
in $TESTHOSTS_CACHE (the Makefile sets it) or else .cache/testhosts in the repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.hosts.harness import HostFleet, default_cache

FLEET_SIZE = 4


def on_hosts(item: pytest.Item) -> bool:
    """Whether a test uses the hosts: it names them, or asks for them at run time (marked `hosts`)."""
    return "fleet" in getattr(item, "fixturenames", ()) or item.get_closest_marker("hosts") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the hosts run last (in their order), so the four hosts are made only after
    every other test, and the timing-sensitive ones never share the CPU with them."""
    items.sort(key=on_hosts)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFleet]:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("the test hosts are for the serial pass alone (one fleet, nothing else running): "
                    "mark the tests that use them `serial`")
    if os.geteuid() != 0:
        pytest.skip("the test hosts need root: they run a private Docker daemon and debootstrap")
    with HostFleet.start(FLEET_SIZE, tmp_path_factory.mktemp("testhosts"), cache=default_cache()) as made:
        yield made


@pytest.fixture
def hosts(fleet: HostFleet) -> Iterator[HostFleet]:
    fleet.reset()
    yield fleet
