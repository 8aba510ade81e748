"""Alembic environment for turnout's state database.

`turnout.store.db.Store.open` hands its own connection (already inside a transaction)
through `config.attributes["connection"]`; the alembic command line instead gets its URL
from `sqlalchemy.url` or `TURNOUT_DATABASE_URL`. Logging is left alone on purpose: this
runs inside the CLI, whose log setup must not be replaced.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from turnout.statedir import DATABASE_URL_ENV, configured_database_url
from turnout.store.schema import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or configured_database_url()
    if not url:
        raise RuntimeError(f"set sqlalchemy.url or {DATABASE_URL_ENV}")
    return url


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()
