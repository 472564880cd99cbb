"""Alembic environment of the records store.

Run through `records.store.Store.upgrade()` (or `python -m records upgrade`), which hands over its
own connection in `config.attributes["connection"]`; with only `sqlalchemy.url` set, the store's
engine is opened from it (SQLite pragmas included). All migrations run in one transaction, and on
PostgreSQL under an advisory lock, so that service instances starting together upgrade once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from records.schema import Base

# Any constant 64-bit key: the one lock that serialises upgrades of one PostgreSQL database.
UPGRADE_LOCK_KEY = 0x7262635F7265636F  # "rbc_reco"

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transactional_ddl=True,  # SQLite too: the store begins its transactions itself
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from records.store import open_store

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("records migrations: no connection and no sqlalchemy.url")
    store = open_store(url)
    try:
        with store.engine.connect() as connection:
            _run(connection)
    finally:
        store.close()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
