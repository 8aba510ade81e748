"""Tokens of `turnout server` below the HTTP layer: revocation in the store (and the
migration that brings it to existing databases), the cache that notices revocation, and
the bounded table of failed authentications per address.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import turnout.store.engine as engine_module
from turnout.api.guard import FailedAuth
from turnout.api.tokens import Caller, TokenCache
from turnout.errors import UserError
from turnout.flags.store import FlagStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- the store -------------------------------------------------------------------------------
def test_revoking_a_token_refuses_it_lists_it_and_moves_the_mark(tmp_path: Path) -> None:
    with FlagStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        laptop = store.create_token("laptop", "client")
        second = store.create_token("laptop", "client")  # names are not unique
        ops = store.create_token("ops", "admin")
        mark = store.token_revocations()
        assert store.revoke_token("laptop") == 2
        assert store.check_token(laptop) is None and store.check_token(second) is None
        assert store.check_token(ops) is not None
        assert store.token_revocations() != mark
        rows = [(r.name, r.kind, r.revoked_at is not None) for r in store.tokens()]
        assert rows == [("laptop", "client", True), ("laptop", "client", True),
                        ("ops", "admin", False)]
        with pytest.raises(UserError, match="no valid token called 'laptop'"):
            store.revoke_token("laptop")
        with pytest.raises(UserError, match="no valid token called 'nobody'"):
            store.revoke_token("nobody")


def test_tokens_of_a_database_made_before_revocation_stay_valid(tmp_path: Path) -> None:
    """A database at migration 0002 with a token: opening it adds the column, keeps the token."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    here = Path(engine_module.__file__).resolve().parent
    config = Config(str(here / "alembic.ini"))
    config.set_main_option("script_location", str(here / "migrations"))
    old = sa.create_engine(url)
    with old.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.execute(sa.text("INSERT INTO tokens (name, kind, secret_sha256, created_at) "
                             "VALUES ('sdk', 'client', :h, 1.0)"),
                     {"h": "0" * 64})
        conn.execute(sa.text("SELECT * FROM tokens")).one()
    old.dispose()
    with FlagStore.open(url) as store:
        assert [(r.name, r.revoked_at) for r in store.tokens()] == [("sdk", None)]
        assert store.revoke_token("sdk") == 1


# -- the cache -------------------------------------------------------------------------------
def test_the_cache_forgets_answers_when_the_revocation_mark_moves() -> None:
    valid = {"s3cret": Caller("web", "client")}
    marks = [(0, 0.0)]

    async def check(secret: str) -> Caller | None:
        return valid.get(secret)

    async def mark() -> object:
        return marks[-1]

    async def scenario() -> None:
        cache = TokenCache(check, ttl=3600)
        assert await cache.lookup("s3cret") == Caller("web", "client")
        follower = asyncio.create_task(cache.follow(mark, every=0.01))
        await asyncio.sleep(0.05)
        assert cache.cached("s3cret") == (True, Caller("web", "client"))  # the mark did not move
        del valid["s3cret"]
        marks.append((1, 5.0))
        await asyncio.sleep(0.05)
        assert cache.cached("s3cret") == (False, None)  # forgotten: the store is asked again
        assert await cache.lookup("s3cret") is None
        follower.cancel()

    asyncio.run(scenario())


def test_a_lookup_begun_before_the_cache_was_emptied_is_not_kept() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_check(secret: str) -> Caller | None:
            await release.wait()
            return Caller("web", "client")

        cache = TokenCache(slow_check, ttl=3600)
        pending = asyncio.create_task(cache.lookup("s3cret"))
        await asyncio.sleep(0)
        cache.clear()  # a revocation was noticed while the store was being asked
        release.set()
        assert await pending == Caller("web", "client")
        assert cache.cached("s3cret") == (False, None)

    asyncio.run(scenario())


# -- failed authentications -----------------------------------------------------------------
def test_an_address_is_blocked_after_the_limit_for_the_block_time() -> None:
    clock = Clock()
    guard = FailedAuth(limit=3, window=10, block=30, now=clock)
    guard.failed("10.0.0.1")
    guard.failed("10.0.0.1")
    assert guard.retry_after("10.0.0.1") == 0
    guard.failed("10.0.0.1")
    assert guard.retry_after("10.0.0.1") == 30
    assert guard.retry_after("10.0.0.2") == 0
    clock.t += 29.5
    assert guard.retry_after("10.0.0.1") == 1
    clock.t += 1
    assert guard.retry_after("10.0.0.1") == 0


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    guard = FailedAuth(limit=3, window=10, block=30, now=clock)
    for _ in range(10):
        guard.failed("10.0.0.1")
        guard.failed("10.0.0.1")
        clock.t += 11
    assert guard.retry_after("10.0.0.1") == 0


def test_many_addresses_cannot_grow_the_table_past_its_bound() -> None:
    clock = Clock()
    guard = FailedAuth(limit=2, window=60, block=60, max_addresses=1000, now=clock)
    guard.failed("10.9.9.9")
    for i in range(50_000):
        guard.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(guard) == 1000
    recent = f"10.{49_999 >> 16}.{(49_999 >> 8) & 255}.{49_999 & 255}"
    guard.failed(recent)
    assert guard.retry_after(recent) == 60  # the most recent entries are the ones kept
