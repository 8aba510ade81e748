"""What every store on the state database shares: opening, migrating, transactions, errors.

`Store` (deployments) and `FlagStore` (flags) are two APIs over one database and one
chain of migrations; both inherit from `Database`, and both wrap their public methods
in `converted` so a database error leaves them only as `StoreError`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from turnout.errors import StoreError
from turnout.store.engine import MigrationError, create_engine, migrate

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D", bound="Database")


def reason(exc: BaseException) -> str:
    """The first line of what the database driver said."""
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).splitlines()[0]


def converted(fn: Callable[Concatenate[D, P], R]) -> Callable[Concatenate[D, P], R]:
    """Turn any database error raised by a store method into a StoreError."""

    @functools.wraps(fn)
    def wrapper(self: D, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(self, *args, **kwargs)
        except SQLAlchemyError as exc:
            raise StoreError(f"state database {self.name}: {reason(exc)}") from exc

    return wrapper


class Database:
    """A connection pool to the state database, migrated to the newest schema on open."""

    def __init__(self, engine: sa.Engine, *, now: Callable[[], float] = time.time) -> None:
        self._engine: sa.Engine | None = engine
        self._now = now
        self.name = engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, *, now: Callable[[], float] = time.time) -> Self:
        """Connect to `url`, bring its schema to the newest migration, return the store."""
        shown = url.rpartition("@")[2]  # until parsed, never show what may be a password
        try:
            parsed = sa.make_url(url)
            shown = parsed.render_as_string(hide_password=True)
            engine = create_engine(parsed)
        except (SQLAlchemyError, OSError, ValueError, ImportError) as exc:
            raise StoreError(f"cannot open the state database {shown}: {reason(exc)}") from exc
        try:
            migrate(engine)
        except (SQLAlchemyError, MigrationError, OSError) as exc:
            engine.dispose()
            raise StoreError(f"cannot open the state database {shown}: {reason(exc)}") from exc
        return cls(engine, now=now)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._connect() as conn:
            conn.execution_options(turnout_write=True)
            with conn.begin():
                yield conn

    def _connect(self) -> sa.Connection:
        if self._engine is None:
            raise StoreError(f"state database {self.name} is closed")
        return self._engine.connect()
