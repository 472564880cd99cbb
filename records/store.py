"""The laboratory's records: users, slides, their fields and cells, reviews, sign-off, audit.

Plain functions over a `Store` (an engine plus the Alembic upgrade). Each function is one
transaction and returns frozen dataclasses or plain dicts, never ORM objects.

Rules every write follows:
- the acting `User` is read again from the database (role, active) inside the transaction;
  viewers cannot write, `delete_slide` is for admins;
- a write on a slide first runs `UPDATE slides SET version = version + 1 WHERE id = ? AND
  status = 'open'`: it refuses a signed-off slide (`SlideSignedOff`), takes the slide's row lock on
  PostgreSQL (writes to one slide serialise; a sign-off cannot slip between a check and a write),
  and makes the slide's `version` count every change to the slide or anything on it;
- cell reviews are optimistic: `UPDATE cells ... WHERE id = ? AND version = ?`; a stale version
  raises `StaleVersion` and the whole transaction (slide bump included) is rolled back;
- every change writes an audit row in the same transaction.

SQLite (the embedded default): WAL journal, foreign keys on, a busy timeout, and writes start with
`BEGIN IMMEDIATE` (reads with a plain `BEGIN`), so that concurrent writers from several processes
wait for each other instead of failing half-way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    URL,
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    not_,
    select,
    update,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.pool import StaticPool

from core.smear.counting import count_labels, grades, percentages
from records import schema as db
from records.errors import (
    DatabaseUnavailable,
    DuplicateName,
    Forbidden,
    InvalidInput,
    InvalidLabel,
    NotFound,
    SchemaOutOfDate,
    SlideDeleted,
    SlideNotSignedOff,
    SlideSignedOff,
    StaleVersion,
    first_line,
)
from records.schema import CELL_KINDS, ROLES, utcnow

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS: Final = 15_000
PG_CONNECT_TIMEOUT_S: Final = 10
WRITERS: Final = ("reviewer", "admin")
ADMINS: Final = ("admin",)
MAX_PAGE: Final = 1000
_UPGRADE_LOCK: Final = threading.Lock()

# Called at named points inside write transactions, with the open session: tests use it to fail
# (raise) or die (os._exit) half-way. Points: "add_field:cells_added", "remove_field:deleted",
# "review_cell:updated", "sign_off:updated".
FaultHook = Callable[[str, Session], None]


# --- the store ------------------------------------------------------------------------------


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
    def _read(self) -> Iterator[Session]:
        with self._reads() as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        with self._writes() as session, session.begin():
            yield session

    def _hook(self, point: str, session: Session) -> None:
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


# --- returned records -----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class SlideRecord:
    id: int
    sample_id: str
    microns_per_pixel: float | None
    notes: str
    status: str  # 'open' | 'signed_off'
    created_by: str  # user name
    created_at: datetime
    signed_off_by: str | None
    signed_off_at: datetime | None
    version: int  # give it back to sign_off / update_slide
    field_count: int


@dataclass(frozen=True)
class FieldRecord:
    """A field without its image bytes (`field_image` serves those)."""

    id: int
    slide_id: int
    ordinal: int
    filename: str
    media_type: str
    image_bytes: int
    width: int
    height: int
    microns_per_pixel: float | None
    scale_estimated: bool
    classifier_name: str
    classifier_sha256: str
    detector_name: str
    detector_sha256: str | None
    summary: dict[str, Any]
    created_by: str
    created_at: datetime
    cell_count: int


@dataclass(frozen=True)
class SlideDetail(SlideRecord):
    fields: tuple[FieldRecord, ...] = ()


@dataclass(frozen=True)
class CellRecord:
    id: int
    slide_id: int
    field_id: int
    kind: str
    x: float
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    at_border: bool
    counted: bool
    proposed_label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    needs_review: bool  # flagged by the analysis (stays set after a review)
    final_label: str | None  # None until reviewed
    reviewed_by: str | None
    reviewed_at: datetime | None
    version: int  # give it back to review_cell

    @property
    def label(self) -> str | None:
        """The current label: the reviewed one, else the proposed one."""
        return self.final_label if self.final_label is not None else self.proposed_label

    @property
    def reviewed(self) -> bool:
        return self.reviewed_at is not None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    user: str  # name
    user_id: int
    slide_id: int
    cell_id: int | None
    action: str
    from_value: str | None
    to_value: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class ExportCell:
    """One red cell for a training-set exporter. `image` is the field's uploaded bytes, the same
    object for every cell of a field (read once per field)."""

    slide_id: int
    sample_id: str
    slide_status: str
    field_id: int
    field_ordinal: int
    filename: str
    media_type: str
    image: bytes = field(repr=False)
    microns_per_pixel: float | None
    classifier_name: str
    cell_id: int
    box: tuple[int, int, int, int]
    at_border: bool
    counted: bool
    proposed_label: str | None
    final_label: str | None
    label: str | None  # final if reviewed, else proposed
    reviewed_by: str | None
    reviewed_at: datetime | None


@dataclass(frozen=True)
class CellInput:
    """One cell as the analysis found it. Red cells carry the classifier's `label`,
    `confidence` and `probabilities`; white cells and platelets have `label=None` (their
    `confidence` is the detector's, if any)."""

    kind: str
    x: float
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the uploaded image's pixels
    at_border: bool = False
    counted: bool = True
    label: str | None = None
    confidence: float | None = None
    probabilities: Mapping[str, float] | None = None
    needs_review: bool = False


@dataclass(frozen=True)
class FieldInput:
    """One analysed field: the uploaded bytes, what the analysis used, and what it found."""

    filename: str
    image: bytes = field(repr=False)
    media_type: str
    width: int
    height: int
    classifier_name: str
    classifier_sha256: str  # of the weights the service loaded
    detector_name: str
    detector_sha256: str | None = None  # None for the classical detector
    microns_per_pixel: float | None = None
    scale_estimated: bool = False
    summary: Mapping[str, Any] = field(default_factory=dict)
    cells: Sequence[CellInput] = ()


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


# --- validation -----------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _text(value: object, what: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    value = value.strip()
    if not value and not empty:
        raise InvalidInput(f"{what} is empty")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    return value


def _scale(value: float | None, what: str = "microns_per_pixel") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive number")
    return float(value)


def _json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not plain JSON: {exc}") from None


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number")
    return float(value)


def _cell_row(i: int, cell: CellInput) -> dict[str, Any]:
    where = f"cell {i}"
    if cell.kind not in CELL_KINDS:
        raise InvalidInput(f"{where}: kind {cell.kind!r} is not one of {', '.join(CELL_KINDS)}")
    if len(cell.box) != 4 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in cell.box
    ):
        raise InvalidInput(f"{where}: box must be four integers x0, y0, x1, y1")
    x0, y0, x1, y1 = cell.box
    if x0 > x1 or y0 > y1:
        raise InvalidInput(f"{where}: box {cell.box} has x0 > x1 or y0 > y1")
    confidence = None if cell.confidence is None else _finite(cell.confidence, where)
    if confidence is not None and not 0 <= confidence <= 1:
        raise InvalidInput(f"{where}: confidence {confidence} is outside [0, 1]")
    probabilities: dict[str, float] | None = None
    if cell.kind == "red_cell":
        label = _text(cell.label, f"{where}: label", 64)
        if confidence is None:
            raise InvalidInput(f"{where}: a red cell needs a confidence")
        if cell.probabilities is not None:
            probabilities = {
                _text(k, f"{where}: class", 64): _finite(v, f"{where}: probability")
                for k, v in cell.probabilities.items()
            }
            if label not in probabilities:
                raise InvalidInput(f"{where}: label {label!r} is not among its probabilities")
    else:
        if cell.label is not None or cell.probabilities is not None:
            raise InvalidInput(f"{where}: a {cell.kind} has no label or probabilities")
        label = None
    return {
        "kind": cell.kind,
        "x": _finite(cell.x, f"{where}: x"),
        "y": _finite(cell.y, f"{where}: y"),
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "at_border": bool(cell.at_border),
        "counted": bool(cell.counted),
        "proposed_label": label,
        "confidence": confidence,
        "probabilities": probabilities,
        "needs_review": bool(cell.needs_review),
        "version": 1,
    }


def _check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")


# --- shared steps inside a transaction --------------------------------------------------------


def _acting(session: Session, user: User, roles: Sequence[str], what: str) -> db.User:
    """The acting user as the database has them now; Forbidden unless active with a role in
    `roles`."""
    row = session.get(db.User, user.id)
    if row is None or not row.active:
        raise Forbidden(f"user {user.name!r} is unknown or inactive")
    if row.role not in roles:
        raise Forbidden(f"user {row.name!r} ({row.role}) may not {what}")
    return row


def _why_not(session: Session, slide_id: int) -> None:
    """After a guarded slide UPDATE matched nothing: NotFound or SlideSignedOff (else return:
    the version was stale)."""
    status = session.scalar(select(db.Slide.status).where(db.Slide.id == slide_id))
    if status is None:
        raise NotFound(f"no slide {slide_id}")
    if status == "signed_off":
        raise SlideSignedOff(f"slide {slide_id} is signed off: reopen it first")


def _touch_open_slide(session: Session, slide_id: int, version: int | None = None) -> int:
    """`version = version + 1` on an open slide (and at `version`, when given): refuses a signed-off
    slide and locks its row until commit. Returns the new version."""
    where = [db.Slide.id == slide_id, db.Slide.status == "open"]
    if version is not None:
        where.append(db.Slide.version == version)
    new = session.execute(
        update(db.Slide)
        .where(*where)
        .values(version=db.Slide.version + 1)
        .returning(db.Slide.version)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if new is None:
        _why_not(session, slide_id)
        raise StaleVersion(f"slide {slide_id} changed since version {version}: read it again")
    return int(new)


def _audit(
    session: Session,
    user_id: int,
    slide_id: int,
    action: str,
    *,
    cell_id: int | None = None,
    from_value: str | None = None,
    to_value: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    session.execute(
        insert(db.Audit).values(
            at=at or utcnow(),
            user_id=user_id,
            slide_id=slide_id,
            cell_id=cell_id,
            action=action,
            from_value=from_value,
            to_value=to_value,
            detail=dict(detail or {}),
        )
    )


def _slide_records(session: Session, *where: ColumnElement[bool]) -> list[SlideRecord]:
    creator, signer = aliased(db.User), aliased(db.User)
    field_count = (
        select(func.count(db.Field.id))
        .where(db.Field.slide_id == db.Slide.id)
        .correlate(db.Slide)
        .scalar_subquery()
    )
    rows = session.execute(
        select(db.Slide, creator.name, signer.name, field_count)
        .join(creator, creator.id == db.Slide.created_by)
        .outerjoin(signer, signer.id == db.Slide.signed_off_by)
        .where(*where)
        .order_by(db.Slide.created_at.desc(), db.Slide.id.desc())
    ).all()
    return [
        SlideRecord(
            id=s.id,
            sample_id=s.sample_id,
            microns_per_pixel=s.microns_per_pixel,
            notes=s.notes,
            status=s.status,
            created_by=created_by,
            created_at=s.created_at,
            signed_off_by=signed_off_by,
            signed_off_at=s.signed_off_at,
            version=s.version,
            field_count=int(n),
        )
        for s, created_by, signed_off_by, n in rows
    ]


def _slide_record(session: Session, slide_id: int) -> SlideRecord:
    found = _slide_records(session, db.Slide.id == slide_id)
    if not found:
        raise NotFound(f"no slide {slide_id}")
    return found[0]


def _user(row: db.User) -> User:
    return User(row.id, row.name, row.role, row.active, row.created_at)


# --- users ------------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_user(store: Store, name: str, role: str) -> tuple[User, str]:
    """A new active user and their API token. The token is returned once and only its sha256 is
    stored. Raises InvalidInput (empty name, unknown role) or DuplicateName."""
    name = _text(name, "user name", 64)
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    row = db.User(
        name=name, role=role, token_sha256=_token_hash(token), created_at=utcnow(), active=True
    )
    try:
        with store._write() as session:
            if session.scalar(select(db.User.id).where(db.User.name == name)) is not None:
                raise DuplicateName(f"a user named {name!r} exists")
            session.add(row)
            session.flush()
            user = _user(row)
    except IntegrityError:  # a concurrent create of the same name
        raise DuplicateName(f"a user named {name!r} exists") from None
    return user, token


def authenticate(store: Store, token: str) -> User | None:
    """The active user holding `token`, else None (looked up by the token's sha256)."""
    if not token:
        return None
    with store._read() as session:
        row = session.scalar(select(db.User).where(db.User.token_sha256 == _token_hash(token)))
        return _user(row) if row is not None and row.active else None


def count_users(store: Store) -> int:
    """How many users there are (active or not)."""
    with store._read() as session:
        return int(session.scalar(select(func.count(db.User.id))) or 0)


def list_users(store: Store) -> list[User]:
    """Every user, by name."""
    with store._read() as session:
        return [_user(r) for r in session.scalars(select(db.User).order_by(db.User.name))]


def set_user_active(store: Store, name: str, active: bool) -> User:
    """Deactivate (their token stops working) or reactivate a user. NotFound if unknown."""
    with store._write() as session:
        row = session.scalar(select(db.User).where(db.User.name == name))
        if row is None:
            raise NotFound(f"no user {name!r}")
        row.active = active
        session.flush()
        return _user(row)


# --- slides -----------------------------------------------------------------------------------


def create_slide(
    store: Store,
    user: User,
    sample_id: str,
    microns_per_pixel: float | None = None,
    notes: str = "",
) -> SlideRecord:
    """A new open slide (reviewer or admin). `sample_id` is the laboratory's own id of the sample:
    required, free text, no patient data."""
    sample_id = _text(sample_id, "sample_id", 128)
    scale = _scale(microns_per_pixel)
    notes = _text(notes, "notes", 10_000, empty=True)
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "create slides")
        now = utcnow()
        row = db.Slide(
            sample_id=sample_id,
            microns_per_pixel=scale,
            notes=notes,
            status="open",
            created_by=actor.id,
            created_at=now,
            version=1,
        )
        session.add(row)
        session.flush()
        _audit(session, actor.id, row.id, "create_slide", to_value=sample_id, at=now)
        return _slide_record(session, row.id)


def update_slide(
    store: Store,
    user: User,
    slide_id: int,
    version: int,
    *,
    sample_id: str | None = None,
    notes: str | None = None,
    microns_per_pixel: float | _Unset | None = UNSET,
) -> SlideRecord:
    """Change a slide's sample_id, notes or scale (None for the scale clears it). Optimistic:
    `version` must be the slide's current one (else StaleVersion). Audited with the old and new
    values as JSON."""
    changes: dict[str, Any] = {}
    if sample_id is not None:
        changes["sample_id"] = _text(sample_id, "sample_id", 128)
    if notes is not None:
        changes["notes"] = _text(notes, "notes", 10_000, empty=True)
    if not isinstance(microns_per_pixel, _Unset):
        changes["microns_per_pixel"] = _scale(microns_per_pixel)
    if not changes:
        raise InvalidInput("nothing to change: give sample_id, notes or microns_per_pixel")
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "change slides")
        _touch_open_slide(session, slide_id, version)
        row = session.get(db.Slide, slide_id)
        assert row is not None
        before = {k: getattr(row, k) for k in changes}
        for k, v in changes.items():
            setattr(row, k, v)
        session.flush()
        _audit(
            session,
            actor.id,
            slide_id,
            "update_slide",
            from_value=json.dumps(before, sort_keys=True),
            to_value=json.dumps(changes, sort_keys=True),
        )
        return _slide_record(session, slide_id)


def list_slides(
    store: Store,
    status: str | None = None,
    sample_id: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[SlideRecord], int]:
    """Slides, newest first, and how many match in all. `status`: 'open' or 'signed_off';
    `sample_id`: exact match."""
    _check_page(offset, limit)
    where: list[ColumnElement[bool]] = []
    if status is not None:
        if status not in db.SLIDE_STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(db.SLIDE_STATUSES)}")
        where.append(db.Slide.status == status)
    if sample_id is not None:
        where.append(db.Slide.sample_id == sample_id.strip())
    with store._read() as session:
        total = int(session.scalar(select(func.count(db.Slide.id)).where(*where)) or 0)
        ids = list(
            session.scalars(
                select(db.Slide.id)
                .where(*where)
                .order_by(db.Slide.created_at.desc(), db.Slide.id.desc())
                .offset(offset)
                .limit(limit)
            )
        )
        items = _slide_records(session, db.Slide.id.in_(ids)) if ids else []
    return items, total


def _field_records(session: Session, *where: ColumnElement[bool]) -> list[FieldRecord]:
    creator = aliased(db.User)
    cell_count = (
        select(func.count(db.Cell.id))
        .where(db.Cell.field_id == db.Field.id)
        .correlate(db.Field)
        .scalar_subquery()
    )
    f = db.Field
    rows = session.execute(
        select(
            f.id,
            f.slide_id,
            f.ordinal,
            f.filename,
            f.media_type,
            func.length(f.image),
            f.width,
            f.height,
            f.microns_per_pixel,
            f.scale_estimated,
            f.classifier_name,
            f.classifier_sha256,
            f.detector_name,
            f.detector_sha256,
            f.summary,
            creator.name,
            f.created_at,
            cell_count,
        )
        .join(creator, creator.id == f.created_by)
        .where(*where)
        .order_by(f.slide_id, f.ordinal)
    ).all()
    return [
        FieldRecord(
            id=r[0],
            slide_id=r[1],
            ordinal=r[2],
            filename=r[3],
            media_type=r[4],
            image_bytes=int(r[5]),
            width=r[6],
            height=r[7],
            microns_per_pixel=r[8],
            scale_estimated=bool(r[9]),
            classifier_name=r[10],
            classifier_sha256=r[11],
            detector_name=r[12],
            detector_sha256=r[13],
            summary=dict(r[14] or {}),
            created_by=r[15],
            created_at=r[16],
            cell_count=int(r[17]),
        )
        for r in rows
    ]


def get_slide(store: Store, slide_id: int) -> SlideDetail:
    """A slide and its fields (without image bytes), in upload order. NotFound if none."""
    with store._read() as session:
        slide = _slide_record(session, slide_id)
        fields = _field_records(session, db.Field.slide_id == slide_id)
    return SlideDetail(**vars(slide), fields=tuple(fields))


def delete_slide(store: Store, user: User, slide_id: int) -> None:
    """Delete a slide with its fields and cells (admin only; an open slide: reopen a signed-off
    one first). The audit trail stays, with a 'delete_slide' entry."""
    with store._write() as session:
        actor = _acting(session, user, ADMINS, "delete slides")
        _touch_open_slide(session, slide_id)
        slide = session.get(db.Slide, slide_id)
        assert slide is not None
        n_fields = session.scalar(
            select(func.count(db.Field.id)).where(db.Field.slide_id == slide_id)
        )
        n_cells = session.scalar(select(func.count(db.Cell.id)).where(db.Cell.slide_id == slide_id))
        _audit(
            session,
            actor.id,
            slide_id,
            "delete_slide",
            from_value=slide.sample_id,
            detail={"sample_id": slide.sample_id, "fields": n_fields, "cells": n_cells},
        )
        session.expunge(slide)
        session.execute(
            delete(db.Slide)
            .where(db.Slide.id == slide_id)
            .execution_options(synchronize_session=False)
        )


# --- fields -----------------------------------------------------------------------------------


def add_field(store: Store, user: User, slide_id: int, field_in: FieldInput) -> FieldRecord:
    """Store an analysed field with all its cells (reviewer or admin), in ONE transaction with
    its audit row: all of it is there, or none of it. Refused on a signed-off slide
    (SlideSignedOff); InvalidInput for a malformed field or cell (before anything is written)."""
    filename = _text(field_in.filename, "filename", 255)
    media_type = _text(field_in.media_type, "media_type", 64)
    if not isinstance(field_in.image, bytes) or not field_in.image:
        raise InvalidInput("image must be non-empty bytes")
    for what, value in (("width", field_in.width), ("height", field_in.height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInput(f"{what} must be a positive integer")
    classifier_name = _text(field_in.classifier_name, "classifier_name", 128)
    detector_name = _text(field_in.detector_name, "detector_name", 128)
    for what, digest in (
        ("classifier_sha256", field_in.classifier_sha256),
        ("detector_sha256", field_in.detector_sha256),
    ):
        if (digest is not None or what == "classifier_sha256") and not (
            isinstance(digest, str) and _SHA256.fullmatch(digest)
        ):
            raise InvalidInput(f"{what} must be 64 lowercase hex digits")
    scale = _scale(field_in.microns_per_pixel)
    summary = _json(field_in.summary, "summary")
    cells = [_cell_row(i, c) for i, c in enumerate(field_in.cells)]

    with store._write() as session:
        actor = _acting(session, user, WRITERS, "add fields")
        _touch_open_slide(session, slide_id)
        ordinal = 1 + int(
            session.scalar(
                select(func.coalesce(func.max(db.Field.ordinal), 0)).where(
                    db.Field.slide_id == slide_id
                )
            )
            or 0
        )
        now = utcnow()
        row = db.Field(
            slide_id=slide_id,
            ordinal=ordinal,
            filename=filename,
            image=field_in.image,
            media_type=media_type,
            width=field_in.width,
            height=field_in.height,
            microns_per_pixel=scale,
            scale_estimated=bool(field_in.scale_estimated),
            classifier_name=classifier_name,
            classifier_sha256=field_in.classifier_sha256,
            detector_name=detector_name,
            detector_sha256=field_in.detector_sha256,
            summary=summary,
            created_by=actor.id,
            created_at=now,
        )
        session.add(row)
        session.flush()
        field_id = row.id
        session.expunge(row)  # the image bytes need not stay in the session
        if cells:
            session.execute(
                insert(db.Cell), [{**c, "slide_id": slide_id, "field_id": field_id} for c in cells]
            )
        store._hook("add_field:cells_added", session)
        n_red = sum(c["kind"] == "red_cell" for c in cells)
        _audit(
            session,
            actor.id,
            slide_id,
            "add_field",
            to_value=str(field_id),
            detail={
                "field_id": field_id,
                "ordinal": ordinal,
                "filename": filename,
                "image_bytes": len(field_in.image),
                "cells": len(cells),
                "red_cells": n_red,
                "classifier": classifier_name,
                "classifier_sha256": field_in.classifier_sha256,
                "detector": detector_name,
                "detector_sha256": field_in.detector_sha256,
            },
            at=now,
        )
        return _field_records(session, db.Field.id == field_id)[0]


def remove_field(store: Store, user: User, slide_id: int, field_id: int) -> None:
    """Remove a field and its cells from an open slide (reviewer or admin), audited with what
    went (cells, reviewed cells). NotFound if the field is not on that slide."""
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "remove fields")
        _touch_open_slide(session, slide_id)
        found = session.execute(
            select(db.Field.ordinal, db.Field.filename).where(
                db.Field.id == field_id, db.Field.slide_id == slide_id
            )
        ).one_or_none()
        if found is None:
            raise NotFound(f"no field {field_id} on slide {slide_id}")
        n_cells, n_reviewed = session.execute(
            select(func.count(db.Cell.id), func.count(db.Cell.reviewed_at)).where(
                db.Cell.field_id == field_id
            )
        ).one()
        session.execute(
            delete(db.Field)
            .where(db.Field.id == field_id)
            .execution_options(synchronize_session=False)
        )
        store._hook("remove_field:deleted", session)
        _audit(
            session,
            actor.id,
            slide_id,
            "remove_field",
            from_value=str(field_id),
            detail={
                "field_id": field_id,
                "ordinal": found.ordinal,
                "filename": found.filename,
                "cells": int(n_cells),
                "reviewed_cells": int(n_reviewed),
            },
        )


def field_image(store: Store, slide_id: int, field_id: int) -> tuple[bytes, str]:
    """The field's uploaded bytes and media type. NotFound if not on that slide."""
    with store._read() as session:
        found = session.execute(
            select(db.Field.image, db.Field.media_type).where(
                db.Field.id == field_id, db.Field.slide_id == slide_id
            )
        ).one_or_none()
    if found is None:
        raise NotFound(f"no field {field_id} on slide {slide_id}")
    return bytes(found[0]), str(found[1])


# --- cells ------------------------------------------------------------------------------------

_CURRENT_LABEL = func.coalesce(db.Cell.final_label, db.Cell.proposed_label)
_AWAITING_REVIEW = and_(db.Cell.needs_review.is_(True), db.Cell.reviewed_at.is_(None))


def _cell_record(c: db.Cell, reviewer: str | None) -> CellRecord:
    return CellRecord(
        id=c.id,
        slide_id=c.slide_id,
        field_id=c.field_id,
        kind=c.kind,
        x=c.x,
        y=c.y,
        box=(c.x0, c.y0, c.x1, c.y1),
        at_border=c.at_border,
        counted=c.counted,
        proposed_label=c.proposed_label,
        confidence=c.confidence,
        probabilities=dict(c.probabilities) if c.probabilities is not None else None,
        needs_review=c.needs_review,
        final_label=c.final_label,
        reviewed_by=reviewer,
        reviewed_at=c.reviewed_at,
        version=c.version,
    )


def _slide_exists(session: Session, slide_id: int) -> None:
    if session.scalar(select(db.Slide.id).where(db.Slide.id == slide_id)) is None:
        raise NotFound(f"no slide {slide_id}")


def list_cells(
    store: Store,
    slide_id: int,
    label: str | None = None,
    needs_review: bool | None = None,
    kind: str = "red_cell",
    offset: int = 0,
    limit: int = 200,
    *,
    reviewed: bool | None = None,
    field_id: int | None = None,
) -> tuple[list[CellRecord], int]:
    """A slide's cells of one `kind`, least confident first (then by id; no confidence last),
    and how many match in all.

    `label` filters on the current label (the reviewed one, else the proposed one);
    `needs_review=True` keeps the cells the analysis flagged that nobody has reviewed yet (False:
    all the others); `reviewed` keeps reviewed (True) or unreviewed (False) cells; `field_id` one
    field's. NotFound if there is no such slide.
    """
    if kind not in CELL_KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(CELL_KINDS)}")
    _check_page(offset, limit)
    c = db.Cell
    where: list[ColumnElement[bool]] = [c.slide_id == slide_id, c.kind == kind]
    if label is not None:
        where.append(_CURRENT_LABEL == label)  # noqa: SIM300 (typed: a SQL expression)
    if needs_review is not None:
        where.append(_AWAITING_REVIEW if needs_review else not_(_AWAITING_REVIEW))
    if reviewed is not None:
        where.append(c.reviewed_at.is_not(None) if reviewed else c.reviewed_at.is_(None))
    if field_id is not None:
        where.append(c.field_id == field_id)
    reviewer = aliased(db.User)
    with store._read() as session:
        _slide_exists(session, slide_id)
        total = int(session.scalar(select(func.count(c.id)).where(*where)) or 0)
        rows = session.execute(
            select(c, reviewer.name)
            .outerjoin(reviewer, reviewer.id == c.reviewed_by)
            .where(*where)
            .order_by(case((c.confidence.is_(None), 1), else_=0), c.confidence, c.id)
            .offset(offset)
            .limit(limit)
        ).all()
        return [_cell_record(cell, name) for cell, name in rows], total


def get_cell(store: Store, slide_id: int, cell_id: int) -> CellRecord:
    """One cell of a slide. NotFound if not on that slide."""
    reviewer = aliased(db.User)
    with store._read() as session:
        found = session.execute(
            select(db.Cell, reviewer.name)
            .outerjoin(reviewer, reviewer.id == db.Cell.reviewed_by)
            .where(db.Cell.id == cell_id, db.Cell.slide_id == slide_id)
        ).one_or_none()
        if found is None:
            raise NotFound(f"no cell {cell_id} on slide {slide_id}")
        return _cell_record(found[0], found[1])


def review_cell(
    store: Store,
    user: User,
    slide_id: int,
    cell_id: int,
    version: int,
    label: str | None = None,
    classes: Sequence[str] | None = None,
) -> CellRecord:
    """Review a red cell (reviewer or admin): `label=None` confirms its current label, a label
    reclassifies it ('relabel'; the same label as now counts as 'confirm').

    `version` is the cell's version as the reviewer saw it: `UPDATE cells ... WHERE id = ? AND
    version = ?` and `version + 1`; if it changed meanwhile, StaleVersion and nothing changes.
    Allowed labels: `classes` if given, else the keys of the cell's probabilities (InvalidLabel
    otherwise). SlideSignedOff on a signed-off slide, Forbidden for viewers, NotFound if the cell
    is not on that slide, InvalidInput for a white cell or platelet.
    """
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "review cells")
        _touch_open_slide(session, slide_id)
        found = session.execute(
            select(
                db.Cell.kind, db.Cell.proposed_label, db.Cell.final_label, db.Cell.probabilities
            ).where(db.Cell.id == cell_id, db.Cell.slide_id == slide_id)
        ).one_or_none()
        if found is None:
            raise NotFound(f"no cell {cell_id} on slide {slide_id}")
        kind, proposed, final, probabilities = found
        if kind != "red_cell":
            raise InvalidInput(f"cell {cell_id} is a {kind}: only red cells are reviewed")
        current = final if final is not None else proposed
        if label is None:
            new, action = current, "confirm"
        else:
            allowed = list(classes) if classes is not None else list(probabilities or {})
            if label not in allowed:
                raise InvalidLabel(
                    f"label {label!r} is not one of this slide's classes: {', '.join(allowed)}"
                )
            new, action = label, ("confirm" if label == current else "relabel")
        now = utcnow()
        updated = session.execute(
            update(db.Cell)
            .where(db.Cell.id == cell_id, db.Cell.version == version)
            .values(
                final_label=new,
                reviewed_by=actor.id,
                reviewed_at=now,
                version=db.Cell.version + 1,
            )
            .returning(db.Cell.version)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if updated is None:
            raise StaleVersion(f"cell {cell_id} changed since version {version}: read it again")
        store._hook("review_cell:updated", session)
        _audit(
            session,
            actor.id,
            slide_id,
            action,
            cell_id=cell_id,
            from_value=current,
            to_value=new,
            detail={"proposed": proposed, "version": int(updated)},
            at=now,
        )
        reviewed = session.get_one(db.Cell, cell_id)
        return _cell_record(reviewed, actor.name)


# --- sign-off -----------------------------------------------------------------------------------


def sign_off(store: Store, user: User, slide_id: int, version: int) -> SlideRecord:
    """Sign off a slide (reviewer or admin): from then on every write to it is refused until it is
    reopened. `version` is the slide's version as the signer saw it (any change since, a review
    included, gives StaleVersion). SlideSignedOff if it already is. Audited with the counts at
    sign-off."""
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "sign off slides")
        now = utcnow()
        done = session.execute(
            update(db.Slide)
            .where(db.Slide.id == slide_id, db.Slide.status == "open", db.Slide.version == version)
            .values(
                status="signed_off",
                signed_off_by=actor.id,
                signed_off_at=now,
                version=db.Slide.version + 1,
            )
            .returning(db.Slide.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if done is None:
            _why_not(session, slide_id)
            raise StaleVersion(f"slide {slide_id} changed since version {version}: read it again")
        store._hook("sign_off:updated", session)
        counts = _counts(session, slide_id, None)
        _audit(
            session,
            actor.id,
            slide_id,
            "sign_off",
            from_value="open",
            to_value="signed_off",
            detail={
                "cells_counted": counts["cells_counted"],
                "counts": counts["counts"],
                "needs_review_remaining": counts["needs_review_remaining"],
            },
            at=now,
        )
        return _slide_record(session, slide_id)


def reopen(store: Store, user: User, slide_id: int, reason: str) -> SlideRecord:
    """Reopen a signed-off slide (reviewer or admin) for changes; `reason` is required and goes
    into the audit trail with who had signed it off and when. SlideNotSignedOff if it is open."""
    reason = _text(reason, "reason", 2000)
    with store._write() as session:
        actor = _acting(session, user, WRITERS, "reopen slides")
        before = session.execute(
            select(db.Slide.signed_off_by, db.Slide.signed_off_at).where(
                db.Slide.id == slide_id, db.Slide.status == "signed_off"
            )
        ).one_or_none()
        done = session.execute(
            update(db.Slide)
            .where(db.Slide.id == slide_id, db.Slide.status == "signed_off")
            .values(
                status="open", signed_off_by=None, signed_off_at=None, version=db.Slide.version + 1
            )
            .returning(db.Slide.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if done is None or before is None:
            _slide_exists(session, slide_id)
            raise SlideNotSignedOff(f"slide {slide_id} is open")
        signer = session.get(db.User, before.signed_off_by) if before.signed_off_by else None
        _audit(
            session,
            actor.id,
            slide_id,
            "reopen",
            from_value="signed_off",
            to_value="open",
            detail={
                "reason": reason,
                "signed_off_by": signer.name if signer else None,
                "signed_off_at": before.signed_off_at.isoformat() if before.signed_off_at else None,
            },
        )
        return _slide_record(session, slide_id)


# --- counts, audit, export ----------------------------------------------------------------------


def _slide_classes(session: Session, slide_id: int) -> list[str]:
    """The classes of the classifier(s) that analysed the slide: the probabilities' keys of the
    first red cell of each field, in their order."""
    firsts = (
        select(func.min(db.Cell.id))
        .where(db.Cell.slide_id == slide_id, db.Cell.kind == "red_cell")
        .group_by(db.Cell.field_id)
    )
    classes: list[str] = []
    for probabilities in session.scalars(
        select(db.Cell.probabilities).where(db.Cell.id.in_(firsts)).order_by(db.Cell.id)
    ):
        for name in probabilities or {}:
            if name not in classes:
                classes.append(name)
    return classes


def _counts(session: Session, slide_id: int, classes: Sequence[str] | None) -> dict[str, Any]:
    c = db.Cell
    red = and_(c.slide_id == slide_id, c.kind == "red_cell")
    per_label = {
        str(label): int(n)
        for label, n in session.execute(
            select(_CURRENT_LABEL, func.count(c.id))
            .where(red, c.counted.is_(True))
            .group_by(_CURRENT_LABEL)
        ).all()
    }
    names = list(classes) if classes is not None else _slide_classes(session, slide_id)
    names += sorted(label for label in per_label if label not in names)
    counts = count_labels((), names)
    counts.update(per_label)
    shares = percentages(counts)
    red_cells, reviewed, relabelled, remaining = session.execute(
        select(
            func.count(c.id),
            func.count(c.reviewed_at),
            func.count(
                case((and_(c.reviewed_at.is_not(None), c.final_label != c.proposed_label), 1))
            ),
            func.count(case((_AWAITING_REVIEW, 1))),
        ).where(red)
    ).one()
    by_kind = dict(
        session.execute(
            select(c.kind, func.count(c.id)).where(c.slide_id == slide_id).group_by(c.kind)
        ).all()
    )
    n_fields = session.scalar(select(func.count(db.Field.id)).where(db.Field.slide_id == slide_id))
    return {
        "slide_id": slide_id,
        "classes": names,
        "counts": counts,
        "percentages": shares,
        "grades": grades(shares),
        "cells_counted": sum(counts.values()),
        "red_cells": int(red_cells),
        "white_cells": int(by_kind.get("white_cell", 0)),
        "platelets": int(by_kind.get("platelet", 0)),
        "fields": int(n_fields or 0),
        "reviewed": int(reviewed),
        "relabelled": int(relabelled),
        "needs_review_remaining": int(remaining),
    }


def slide_counts(
    store: Store, slide_id: int, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The slide's counts over the counted red cells of all its fields, by current label
    (reviewed, else proposed): `counts`, `percentages`, ICSH `grades` (core.smear.grading),
    `cells_counted`; and `red_cells` (counted or not), `white_cells`, `platelets` (all found),
    `fields`, `reviewed`, `relabelled`, `needs_review_remaining` (flagged, not yet reviewed),
    `classes`. Every class of `classes` (default: the classifier's, from the cells'
    probabilities) is present, 0 when none; a label outside them is added, never dropped.
    NotFound if there is no such slide."""
    with store._read() as session:
        _slide_exists(session, slide_id)
        return _counts(session, slide_id, classes)


def audit_trail(store: Store, slide_id: int, *, deleted: bool = True) -> list[AuditEntry]:
    """Everything done to a slide, oldest first; kept after the slide is deleted, and returned
    for a deleted slide too unless `deleted` is False (then SlideDeleted). NotFound if neither
    the slide nor any entry exists."""
    who = aliased(db.User)
    a = db.Audit
    with store._read() as session:
        rows = session.execute(
            select(a, who.name)
            .join(who, who.id == a.user_id)
            .where(a.slide_id == slide_id)
            .order_by(a.id)
        ).all()
        if not rows or not deleted:
            try:
                _slide_exists(session, slide_id)
            except NotFound:
                if rows:
                    raise SlideDeleted(f"slide {slide_id} was deleted") from None
                raise
        return [
            AuditEntry(
                id=e.id,
                at=e.at,
                user=name,
                user_id=e.user_id,
                slide_id=e.slide_id,
                cell_id=e.cell_id,
                action=e.action,
                from_value=e.from_value,
                to_value=e.to_value,
                detail=dict(e.detail or {}),
            )
            for e, name in rows
        ]


def reviewed_cells(
    store: Store, reviewed_only: bool = True, *, signed_off_only: bool = False
) -> Iterator[ExportCell]:
    """Red cells for a training-set exporter, field by field (each field's image read once, in a
    short transaction of its own: no transaction stays open while the caller works).
    `reviewed_only`: only cells a technologist reviewed (label = final label); else every red cell
    (label = final if reviewed, else proposed). `signed_off_only`: only signed-off slides."""
    c, f, s = db.Cell, db.Field, db.Slide
    where: list[ColumnElement[bool]] = [c.kind == "red_cell"]
    if reviewed_only:
        where.append(c.reviewed_at.is_not(None))
    if signed_off_only:
        where.append(s.status == "signed_off")
    with store._read() as session:
        field_ids = list(
            session.scalars(
                select(f.id)
                .join(s, s.id == f.slide_id)
                .where(f.id.in_(select(c.field_id).join(s, s.id == c.slide_id).where(*where)))
                .order_by(f.slide_id, f.ordinal)
            )
        )
    reviewer = aliased(db.User)
    for field_id in field_ids:
        with store._read() as session:
            head = session.execute(
                select(
                    s.id,
                    s.sample_id,
                    s.status,
                    f.ordinal,
                    f.filename,
                    f.media_type,
                    f.image,
                    f.microns_per_pixel,
                    f.classifier_name,
                )
                .join(s, s.id == f.slide_id)
                .where(f.id == field_id)
            ).one_or_none()
            if head is None:  # removed since
                continue
            rows = session.execute(
                select(c, reviewer.name)
                .join(s, s.id == c.slide_id)
                .outerjoin(reviewer, reviewer.id == c.reviewed_by)
                .where(c.field_id == field_id, *where)
                .order_by(c.id)
            ).all()
        image = bytes(head.image)
        for cell, name in rows:
            yield ExportCell(
                slide_id=head.id,
                sample_id=head.sample_id,
                slide_status=head.status,
                field_id=field_id,
                field_ordinal=head.ordinal,
                filename=head.filename,
                media_type=head.media_type,
                image=image,
                microns_per_pixel=head.microns_per_pixel,
                classifier_name=head.classifier_name,
                cell_id=cell.id,
                box=(cell.x0, cell.y0, cell.x1, cell.y1),
                at_border=cell.at_border,
                counted=cell.counted,
                proposed_label=cell.proposed_label,
                final_label=cell.final_label,
                label=cell.final_label if cell.final_label is not None else cell.proposed_label,
                reviewed_by=name,
                reviewed_at=cell.reviewed_at,
            )


# --- maintenance: backups and retention (python -m records backup / delete-slides) -----------


def find_user(store: Store, name: str) -> User | None:
    """The user named `name` (active or not), else None."""
    with store._read() as session:
        row = session.scalar(select(db.User).where(db.User.name == name))
        return _user(row) if row is not None else None


def slides_created_before(
    store: Store, before: datetime, status: str | None = None
) -> list[SlideRecord]:
    """Every slide created before `before` (an aware datetime), oldest first; `status`: only
    'open' or only 'signed_off' ones."""
    if before.tzinfo is None:
        raise InvalidInput("before must be timezone-aware")
    where: list[ColumnElement[bool]] = [db.Slide.created_at < before]
    if status is not None:
        if status not in db.SLIDE_STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(db.SLIDE_STATUSES)}")
        where.append(db.Slide.status == status)
    with store._read() as session:
        records = _slide_records(session, *where)
    return sorted(records, key=lambda r: (r.created_at, r.id))


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


__all__ = [
    "UNSET",
    "AuditEntry",
    "CellInput",
    "CellRecord",
    "ExportCell",
    "FieldInput",
    "FieldRecord",
    "SlideDetail",
    "SlideRecord",
    "Store",
    "User",
    "add_field",
    "audit_trail",
    "authenticate",
    "backup_sqlite",
    "count_users",
    "create_slide",
    "create_user",
    "default_url",
    "delete_slide",
    "field_image",
    "find_user",
    "get_cell",
    "get_slide",
    "list_cells",
    "list_slides",
    "list_users",
    "open_store",
    "remove_field",
    "reopen",
    "review_cell",
    "reviewed_cells",
    "set_user_active",
    "sign_off",
    "slide_counts",
    "slides_created_before",
    "update_slide",
]
