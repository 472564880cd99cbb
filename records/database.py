"""The records database: the engine (SQLite's WAL, busy timeout and write locks; PostgreSQL's
connect timeout), the Alembic upgrade, and the transactions every other module runs in; SQLite
backups."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from records.errors import (
    DatabaseUnavailable,
    InvalidInput,
    SchemaOutOfDate,
    first_line,
)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"


SQLITE_BUSY_TIMEOUT_MS: Final = 15_000


PG_CONNECT_TIMEOUT_S: Final = 10


_UPGRADE_LOCK: Final = threading.Lock()


# Called at named points inside write transactions, with the open session: tests use it to fail
# (raise) or die (os._exit) half-way. Points: "add_field:cells_added", "remove_field:deleted",
# "review_cell:updated", "accept_proposals:updated", "sign_off:updated".
FaultHook = Callable[[str, Session], None]


class Store:
    """An engine on the records database, and its schema upgrade. Open with `open_store`; close
    with `close()` (or use it as a context manager)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fault_hook: FaultHook | None = None
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(
            engine.execution_options(records_write=True), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    def upgrade(self) -> str:
        """Bring the database to the newest schema with Alembic (an empty database is created;
        one at head is left alone; instances upgrading together are serialised). Returns the
        revision it is at."""
        from alembic import command

        cfg = _alembic_config()
        # Alembic's `context` is process-global: one upgrade at a time in a process. Between
        # processes the migration environment serialises them (env.py).
        writer = self.engine.execution_options(records_write=True)  # SQLite: BEGIN IMMEDIATE
        with _UPGRADE_LOCK, writer.connect() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            if connection.in_transaction():
                connection.commit()
        current = self.current_revision()
        assert current is not None
        return current

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None: never upgraded)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        """The newest revision in records/migrations."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        assert head is not None
        return head

    def check_current(self) -> None:
        """Raise `SchemaOutOfDate` unless the database is at the newest revision."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise SchemaOutOfDate(
                f"database {self.display_url} is at schema revision {current or 'none'}, "
                f"this code needs {head}: run `python -m records upgrade`"
            )

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._reads() as session:
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """One read transaction whose queries all see the same state: on PostgreSQL at
        REPEATABLE READ (its default, READ COMMITTED, gives each query its own snapshot); a
        SQLite read transaction (WAL) holds its snapshot from its first query to its end."""
        with self._reads() as session:
            if self.dialect == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        with self._writes() as session, session.begin():
            yield session

    def fault_point(self, point: str, session: Session) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point, session)


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def default_url(data_dir: str | Path) -> str:
    """The embedded database: `sqlite:///<data_dir>/rbc.sqlite3`."""
    return f"sqlite:///{Path(data_dir) / 'rbc.sqlite3'}"


def open_store(url: str | URL, *, create_dirs: bool = False) -> Store:
    """Open the database at `url` and check that it answers.

    `postgresql://` and `postgres://` URLs use psycopg 3. SQLite files get WAL, foreign keys and a
    busy timeout on every connection; `create_dirs` makes the file's folder first. Raises
    `DatabaseUnavailable` (one line, no password) for a malformed URL, a missing driver or a
    database that cannot be reached. Does not upgrade: call `store.upgrade()`.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUnavailable(f"malformed database URL: {first_line(exc)}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    shown = parsed.render_as_string(hide_password=True)
    kwargs: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if path in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        elif create_dirs and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnavailable(f"cannot use database URL {shown}: {first_line(exc)}") from None
    if backend == "sqlite":
        _sqlite_events(engine, memory=parsed.database in (None, "", ":memory:"))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except (DBAPIError, OSError) as exc:
        engine.dispose()
        raise DatabaseUnavailable(f"cannot reach database {shown}: {first_line(exc)}") from None
    return Store(engine)


def _journal_mode_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, tried again while SQLite says "database is locked": switching a
    new file to WAL takes an exclusive lock, and while another process does the same SQLite can
    answer at once rather than wait out busy_timeout (seen with two `records upgrade` at once)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_events(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's events, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: WAL waits
            if not memory:
                _journal_mode_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("records_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def backup_sqlite(store: Store, out: str | Path) -> int:
    """Copy a SQLite records database to the file `out` with SQLite's online backup API, in one
    step: the copy is one consistent snapshot even while the service writes (in WAL mode the
    writers do not wait for it). Written to `out` + '.partial' and renamed when complete, so a
    failed backup leaves no half file at `out`. Returns the copy's size in bytes. InvalidInput
    for a database that is not SQLite."""
    import os
    import sqlite3

    if store.dialect != "sqlite":
        raise InvalidInput(f"{store.display_url} is not a SQLite database")
    target = Path(out)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    raw = store.engine.raw_connection()
    try:
        source = raw.driver_connection
        assert isinstance(source, sqlite3.Connection)
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # pages=-1: the whole database in one step, one read snapshot
            # A standalone file: no -wal beside it, readable by any sqlite3.
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        raw.close()
    os.replace(partial, target)
    return target.stat().st_size
