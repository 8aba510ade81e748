"""Engines for the store: SQLite tuned for two processes at once, and schema migrations.

SQLite gets WAL (readers never block the writer), a busy timeout (a writer waits for the
other instead of failing at once) and explicit transaction starts: the driver's own
implicit BEGIN is turned off so that DDL is transactional and write transactions start
with `BEGIN IMMEDIATE` (two writers queue up front instead of failing half way when a
read lock cannot be upgraded). Migrations are the Alembic scripts shipped in this package;
a database already at the newest of them is not handed to Alembic at all (importing it is a
third of a command's start-up), so it is imported only when there is something to upgrade.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_HERE = Path(__file__).resolve().parent
_VERSIONS = _HERE / "migrations" / "versions"
BUSY_TIMEOUT_MS = 15_000


def create_engine(url: sa.URL) -> sa.Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    if database in ("", ":memory:"):
        engine = sa.create_engine(url, poolclass=sa.pool.StaticPool)
    else:
        if not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let the store, not the driver, decide where transactions begin (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode = WAL`, which needs the file to itself for a moment: SQLite answers
    "database is locked" at once, without its busy timeout, while another process opens the
    same new file, so it is tried again for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get("turnout_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class MigrationError(Exception):
    """Alembic could not bring the schema up to date (its own error, in words)."""


def head() -> str:
    """The newest migration's revision: each script's revision is its file's number
    (`0005_deploy_locks.py` is "0005"; a test holds every script to it)."""
    return max(p.name[:4] for p in _VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def _current(conn: sa.Connection) -> str | None:
    """The revision the database is at; None before the first migration."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def migrate(engine: sa.Engine) -> None:
    """`alembic upgrade head` on the store's own connection, one process at a time; nothing
    (and no Alembic) when the database is already at the head."""
    with engine.connect() as conn:
        conn.execution_options(turnout_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(74160001)")
            if _current(conn) == head():
                return
            _upgrade(conn)


def _upgrade(conn: sa.Connection) -> None:
    from alembic import command  # here: only when there is something to upgrade
    from alembic.config import Config
    from alembic.util.exc import CommandError

    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc
