"""The records store (records/) on real databases: a temporary SQLite file and the local
PostgreSQL (a fresh `rbc_test_<hex>` database per module, dropped afterwards; the PostgreSQL cases
skip, saying why, when no server answers). $RBC_TEST_DATABASE_URL names the server (a URL to an
existing database, e.g. `test`, on which the test user may CREATE DATABASE); when it is set, as
.ci/run sets it, a server that does not answer fails the PostgreSQL cases instead of skipping them.

No mocks: atomicity is checked by failing inside the real transaction (a constraint violation, a
raised exception, a process that dies with os._exit), concurrency with separate engines and
separate processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, create_engine, make_url, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from records import schema
from records.__main__ import main as cli_main
from records.errors import (
    DatabaseUnavailable,
    DuplicateName,
    Forbidden,
    InvalidInput,
    InvalidLabel,
    NotFound,
    SchemaOutOfDate,
    SlideNotSignedOff,
    SlideSignedOff,
    StaleVersion,
)
from records.store import (
    MIN_CELLS_FOR_GRADING,
    CellInput,
    FieldInput,
    Store,
    User,
    add_field,
    audit_trail,
    authenticate,
    count_users,
    create_slide,
    create_user,
    default_url,
    delete_slide,
    field_cells,
    field_image,
    get_cell,
    get_slide,
    grading_warnings,
    list_cells,
    list_slides,
    list_users,
    open_store,
    remove_field,
    reopen,
    review_cell,
    reviewed_cells,
    set_user_active,
    sign_off,
    slide_counts,
    slide_sheet,
    slide_view,
    update_slide,
)

REPO = Path(__file__).resolve().parents[2]
# Set (CI): PostgreSQL must answer. Unset (a user's machine): the local server if there is one.
PG_REQUIRED = bool(os.environ.get("RBC_TEST_DATABASE_URL"))
PG_ADMIN_URL = (
    os.environ.get("RBC_TEST_DATABASE_URL")
    or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
CLASSES = ["normal", "spherocyte", "target_cell", "schistocyte"]
SHA = "ab" * 32
TABLES = ("teach_jobs", "model_activations", "audit", "cells", "fields", "slides", "users")


# --- databases --------------------------------------------------------------------------------


def _pg_admin_engine() -> Any:
    url = make_url(PG_ADMIN_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


class PgDatabase:
    """One fresh database on the local server for this module (made and dropped through an
    AUTOCOMMIT connection to the admin database). Tests that need an empty database get a fresh
    schema in it (`new_empty`, via search_path), which is much cheaper than CREATE DATABASE."""

    def __init__(self) -> None:
        self.engine = _pg_admin_engine()
        self.name = f"rbc_test_{uuid.uuid4().hex[:12]}"
        self.created = False
        self.schemas = 0
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self.error: str | None = None
        except Exception as exc:
            shown = make_url(PG_ADMIN_URL).render_as_string()
            first = str(getattr(exc, "orig", exc)).strip().splitlines()
            self.error = f"PostgreSQL at {shown} unreachable: {first[0] if first else exc}"

    def url(self, schema_name: str | None = None) -> str:
        if self.error:
            if PG_REQUIRED:
                pytest.fail(f"RBC_TEST_DATABASE_URL is set but {self.error}")
            pytest.skip(self.error)
        if not self.created:
            with self.engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
            self.created = True
        url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=self.name)
        if schema_name is not None:
            url = url.update_query_dict({"options": f"-csearch_path={schema_name}"})
        return url.render_as_string(hide_password=False)

    def new_empty(self) -> str:
        self.schemas += 1
        name = f"fresh_{self.schemas}"
        engine = create_engine(self.url())
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        engine.dispose()
        return self.url(name)

    def drop(self) -> None:
        if self.created:
            with self.engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.engine.dispose()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_url(
    backend: str, pg: PgDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """Makes the URL of a new, empty database of the current backend."""

    def make() -> str:
        if backend == "sqlite":
            return default_url(tmp_path_factory.mktemp("db"))
        return pg.new_empty()

    return make


@pytest.fixture(scope="module")
def module_url(backend: str, pg: PgDatabase, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One upgraded database per module and backend, emptied before each test."""
    url = default_url(tmp_path_factory.mktemp("db")) if backend == "sqlite" else pg.url()
    with open_store(url) as store:
        store.upgrade()
    return url


@pytest.fixture
def store(module_url: str) -> Iterator[Store]:
    s = open_store(module_url)
    with s.engine.begin() as conn:
        if s.dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
    yield s
    s.close()


def rows(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def snapshot(store: Store) -> dict[str, Any]:
    """Everything in the database that a refused or failed write must leave as it was."""
    out: dict[str, Any] = {}
    with store.engine.connect() as conn:
        for table in TABLES:
            cols = "id, version" if table in ("slides", "cells") else "id"
            if table == "cells":
                cols += ", final_label, reviewed_by"
            if table == "slides":
                cols += ", status"
            out[table] = conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id")).all()
    return out


# --- data -------------------------------------------------------------------------------------


def red(
    label: str,
    confidence: float,
    *,
    needs_review: bool = False,
    counted: bool = True,
    at: int = 10,
) -> CellInput:
    rest = (1 - confidence) / (len(CLASSES) - 1)
    probabilities = {c: (confidence if c == label else rest) for c in CLASSES}
    return CellInput(
        kind="red_cell",
        x=at + 0.5,
        y=at + 0.5,
        box=(at, at, at + 8, at + 8),
        at_border=not counted,
        counted=counted,
        label=label,
        confidence=confidence,
        probabilities=probabilities,
        needs_review=needs_review,
    )


def other(kind: str) -> CellInput:
    return CellInput(kind=kind, x=50.0, y=50.0, box=(40, 40, 60, 60), confidence=0.8)


def field_in(
    cells: list[CellInput], name: str = "f.png", image: bytes = b"\x89PNG..."
) -> FieldInput:
    return FieldInput(
        filename=name,
        image=image,
        media_type="image/png",
        width=640,
        height=480,
        classifier_name="resnet18-default",
        classifier_sha256=SHA,
        detector_name="detector",
        detector_sha256="cd" * 32,
        microns_per_pixel=0.1,
        scale_estimated=True,
        summary={"notes": ["ok"], "timings_ms": {"total": 12.5}},
        cells=cells,
    )


def standard_cells() -> list[CellInput]:
    return [
        red("normal", 0.95),
        red("normal", 0.40, needs_review=True),
        red("spherocyte", 0.70),
        red("target_cell", 0.55, needs_review=True),
        red("normal", 0.99, counted=False),
        other("white_cell"),
        other("platelet"),
        other("platelet"),
    ]


@pytest.fixture
def admin(store: Store) -> User:
    return create_user(store, "ada", "admin")[0]


@pytest.fixture
def reviewer(store: Store) -> User:
    return create_user(store, "rae", "reviewer")[0]


def slide_with_field(store: Store, user: User, cells: list[CellInput] | None = None) -> int:
    slide = create_slide(store, user, "S-0001", microns_per_pixel=0.1, notes="test")
    add_field(store, user, slide.id, field_in(standard_cells() if cells is None else cells))
    return slide.id


def red_cells(store: Store, slide_id: int) -> list[Any]:
    return list_cells(store, slide_id, limit=1000)[0]


# --- schema and migrations ----------------------------------------------------------------------


def test_upgrade_empty_database_then_again(new_url: Callable[[], str]) -> None:
    with open_store(new_url()) as store:
        assert store.current_revision() is None
        with pytest.raises(SchemaOutOfDate):
            store.check_current()
        head = Store.head_revision()
        assert store.upgrade() == head
        assert store.upgrade() == head  # idempotent
        store.check_current()
        assert rows(store, "alembic_version") == 1
        for table in TABLES:
            assert rows(store, table) == 0


def test_alembic_head_matches_schema(new_url: Callable[[], str]) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with open_store(new_url()) as store:
        store.upgrade()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, schema.Base.metadata) == []
            # The comparison does see a difference when there is one.
            changed = MetaData()
            for table in schema.Base.metadata.sorted_tables:
                table.to_metadata(changed)
            changed.tables["cells"].append_column(Column("extra", Integer))
            diff = compare_metadata(context, changed)
            assert [d[0] for d in diff] == ["add_column"]


def test_concurrent_upgrades_run_once(new_url: Callable[[], str]) -> None:
    """Service instances starting together: each upgrades, the schema is made once."""
    url = new_url()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RBC_DATABASE_URL": url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "records", "upgrade"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.strip().endswith(f"at schema revision {Store.head_revision()}")
    with open_store(url) as store:
        store.check_current()
        assert rows(store, "alembic_version") == 1


def test_records_imports_no_model_code() -> None:
    code = (
        "import sys, records.store, records.__main__, records.schema\n"
        "heavy = ('torch', 'torchvision', 'fastai', 'app', 'training', 'core.classify',"
        " 'core.detect')\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.')"
        " for h in heavy)))"
    )
    done = _run_py(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with open_store(default_url(tmp_path)) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() > 0
    assert default_url(tmp_path) == f"sqlite:///{tmp_path}/rbc.sqlite3"


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdb://x/y",
        "postgresql://postgres@127.0.0.1:1/postgres",
        "sqlite:////nonexistent-dir/sub/x.db",
    ],
)
def test_bad_or_unreachable_url(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        open_store(url)
    assert "\n" not in str(info.value)


# --- users ------------------------------------------------------------------------------------


def test_users_and_tokens(store: Store) -> None:
    assert count_users(store) == 0
    user, token = create_user(store, "  alice ", "reviewer")
    assert user.name == "alice" and user.role == "reviewer" and user.active
    assert user.created_at.utcoffset() == timedelta(0)
    assert len(token) >= 40
    assert authenticate(store, token) == user
    assert authenticate(store, token + "x") is None
    assert authenticate(store, "") is None
    with store.engine.connect() as conn:  # only the hash is stored
        stored = conn.execute(text("SELECT token_sha256 FROM users")).scalar_one()
    assert stored != token and len(stored) == 64
    _, token2 = create_user(store, "bob", "viewer")
    assert token2 != token and count_users(store) == 2
    assert [u.name for u in list_users(store)] == ["alice", "bob"]
    with pytest.raises(DuplicateName):
        create_user(store, "alice", "admin")
    with pytest.raises(InvalidInput):
        create_user(store, "carol", "superuser")
    with pytest.raises(InvalidInput):
        create_user(store, "  ", "viewer")
    set_user_active(store, "alice", False)
    assert authenticate(store, token) is None
    with pytest.raises(Forbidden):  # the store re-reads the user: a stale User object won't do
        create_slide(store, user, "S-1")


# --- slides and fields ------------------------------------------------------------------------


def test_add_field_stores_everything(store: Store, reviewer: User) -> None:
    slide = create_slide(store, reviewer, "S-0001", microns_per_pixel=0.12, notes="n")
    assert slide.status == "open" and slide.version == 1 and slide.created_by == "rae"
    image = bytes(range(256)) * 100
    f1 = add_field(store, reviewer, slide.id, field_in(standard_cells(), "a.png", image))
    f2 = add_field(store, reviewer, slide.id, field_in([red("normal", 0.9)], "b.png"))
    assert (f1.ordinal, f2.ordinal) == (1, 2)
    assert f1.cell_count == 8 and f1.image_bytes == len(image)
    assert f1.summary == {"notes": ["ok"], "timings_ms": {"total": 12.5}}
    assert f1.classifier_sha256 == SHA and f1.detector_sha256 == "cd" * 32
    assert f1.scale_estimated and f1.microns_per_pixel == 0.1
    assert field_image(store, slide.id, f1.id) == (image, "image/png")
    with pytest.raises(NotFound):
        field_image(store, slide.id + 1, f1.id)
    detail = get_slide(store, slide.id)
    assert [f.filename for f in detail.fields] == ["a.png", "b.png"]
    assert detail.field_count == 2 and detail.version == 3  # create, then two fields
    assert [e.action for e in audit_trail(store, slide.id)] == [
        "create_slide",
        "add_field",
        "add_field",
    ]
    with pytest.raises(NotFound):
        add_field(store, reviewer, 999_999, field_in([]))


def test_add_field_invalid_input_writes_nothing(store: Store, reviewer: User) -> None:
    slide = create_slide(store, reviewer, "S-1")
    before = snapshot(store)
    bad_cells = [
        CellInput("red_cell", 1, 1, (5, 5, 1, 1), label="normal", confidence=0.5),  # box
        CellInput("red_cell", 1, 1, (0, 0, 1, 1), label="normal", confidence=1.5),
        CellInput("red_cell", 1, 1, (0, 0, 1, 1), label=None, confidence=0.5),
        CellInput("white_cell", 1, 1, (0, 0, 1, 1), label="normal"),
        CellInput("monocyte", 1, 1, (0, 0, 1, 1)),
        CellInput("red_cell", float("nan"), 1, (0, 0, 1, 1), label="normal", confidence=0.5),
    ]
    for bad in bad_cells:
        with pytest.raises(InvalidInput):
            add_field(store, reviewer, slide.id, field_in([red("normal", 0.9), bad]))
    with pytest.raises(InvalidInput):
        add_field(
            store, reviewer, slide.id, FieldInput(**{**vars(field_in([])), "summary": {"x": {1}}})
        )
    with pytest.raises(InvalidInput):
        add_field(
            store,
            reviewer,
            slide.id,
            FieldInput(**{**vars(field_in([])), "classifier_sha256": "x"}),
        )
    assert snapshot(store) == before


def test_add_field_constraint_violation_midway_leaves_nothing(store: Store, reviewer: User) -> None:
    slide = create_slide(store, reviewer, "S-1")
    before = snapshot(store)

    def violate(point: str, session: Session) -> None:
        # After the field and its cells are in, a row the database itself refuses (CHECK).
        if point == "add_field:cells_added":
            session.execute(
                text(
                    "INSERT INTO cells (slide_id, field_id, kind, x, y, x0, y0, x1, y1,"
                    " at_border, counted, needs_review, version)"
                    " SELECT slide_id, id, 'bogus', 0, 0, 0, 0, 1, 1, false, true, false, 1"
                    " FROM fields WHERE slide_id = :s"
                ),
                {"s": slide.id},
            )

    store.fault_hook = violate
    with pytest.raises(IntegrityError):
        add_field(store, reviewer, slide.id, field_in(standard_cells()))
    store.fault_hook = None
    assert snapshot(store) == before
    assert rows(store, "fields") == rows(store, "cells") == 0
    assert [e.action for e in audit_trail(store, slide.id)] == ["create_slide"]
    add_field(store, reviewer, slide.id, field_in(standard_cells()))  # and it still works
    assert rows(store, "cells") == 8


def test_add_field_exception_after_cells_leaves_nothing(store: Store, reviewer: User) -> None:
    slide = create_slide(store, reviewer, "S-1")
    before = snapshot(store)
    seen: list[int] = []

    def fail(point: str, session: Session) -> None:
        if point == "add_field:cells_added":
            seen.append(session.execute(text("SELECT count(*) FROM cells")).scalar_one())
            raise RuntimeError("injected")

    store.fault_hook = fail
    with pytest.raises(RuntimeError, match="injected"):
        add_field(store, reviewer, slide.id, field_in(standard_cells()))
    assert seen == [8]  # the cells were in the transaction when it failed
    assert snapshot(store) == before


def _run_py(code: str, *args: str, wait: bool = True) -> Any:
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


KILL_MID_ADD_FIELD = """
    import os, sys
    from records.store import CellInput, FieldInput, User, add_field, open_store
    from datetime import datetime, UTC
    url, user_id, slide_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = open_store(url)
    def die(point, session):
        if point == "add_field:cells_added":
            sys.stdout.write("dying\\n"); sys.stdout.flush()
            os._exit(1)
    store.fault_hook = die
    cells = [CellInput("red_cell", 1.0, 1.0, (0, 0, 2, 2), label="normal", confidence=0.5)] * 50
    field = FieldInput("k.png", b"x" * 100_000, "image/png", 10, 10, "m", "ab" * 32, "classical",
                       cells=cells)
    add_field(store, User(user_id, "rae", "reviewer", True, datetime.now(UTC)), slide_id, field)
    print("not reached")
"""


def test_killed_process_mid_transaction_leaves_old_state(
    store: Store, reviewer: User, module_url: str
) -> None:
    slide_id = slide_with_field(store, reviewer)
    before = snapshot(store)
    done = _run_py(KILL_MID_ADD_FIELD, module_url, str(reviewer.id), str(slide_id))
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == "dying"
    assert snapshot(store) == before
    # Nothing is left locked: another instance writes at once.
    with open_store(module_url) as other_instance:
        add_field(other_instance, reviewer, slide_id, field_in([red("normal", 0.9)]))
    assert get_slide(store, slide_id).field_count == 2


def test_remove_field(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    f2 = add_field(store, reviewer, slide_id, field_in([red("spherocyte", 0.9)], "b.png"))
    cell = list_cells(store, slide_id, field_id=f2.id)[0][0]
    review_cell(store, reviewer, slide_id, cell.id, cell.version)
    with pytest.raises(NotFound):
        remove_field(store, reviewer, slide_id + 1, f2.id)
    remove_field(store, reviewer, slide_id, f2.id)
    assert [f.filename for f in get_slide(store, slide_id).fields] == ["f.png"]
    assert rows(store, "cells") == 8
    last = audit_trail(store, slide_id)[-1]
    assert last.action == "remove_field" and last.user == "rae"
    assert last.detail["cells"] == 1 and last.detail["reviewed_cells"] == 1
    with pytest.raises(NotFound):
        field_image(store, slide_id, f2.id)


def test_delete_slide_takes_fields_and_cells(store: Store, reviewer: User, admin: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    keep = slide_with_field(store, reviewer)
    with pytest.raises(Forbidden):
        delete_slide(store, reviewer, slide_id)
    delete_slide(store, admin, slide_id)
    with pytest.raises(NotFound):
        get_slide(store, slide_id)
    assert rows(store, "fields") == 1 and rows(store, "cells") == 8  # the other slide's
    assert get_slide(store, keep).field_count == 1
    trail = audit_trail(store, slide_id)  # the trail outlives the slide
    assert trail[-1].action == "delete_slide" and trail[-1].detail["cells"] == 8
    with pytest.raises(NotFound):
        delete_slide(store, admin, slide_id)


def test_list_slides(store: Store, reviewer: User) -> None:
    ids = [create_slide(store, reviewer, f"S-{i % 3}").id for i in range(7)]
    items, total = list_slides(store)
    assert total == 7 and [s.id for s in items] == ids[::-1]  # newest first
    page, total = list_slides(store, offset=2, limit=3)
    assert total == 7 and [s.id for s in page] == ids[::-1][2:5]
    items, total = list_slides(store, sample_id="S-1")
    assert total == 2 and {s.sample_id for s in items} == {"S-1"}
    sign_off(store, reviewer, ids[0], 1)
    assert [s.id for s in list_slides(store, status="signed_off")[0]] == [ids[0]]
    assert list_slides(store, status="open")[1] == 6
    with pytest.raises(InvalidInput):
        list_slides(store, status="lost")
    with pytest.raises(InvalidInput):
        list_slides(store, limit=0)


def test_update_slide(store: Store, reviewer: User) -> None:
    slide = create_slide(store, reviewer, "S-1", microns_per_pixel=0.1)
    updated = update_slide(store, reviewer, slide.id, slide.version, notes="re-stained")
    assert updated.notes == "re-stained" and updated.microns_per_pixel == 0.1
    with pytest.raises(StaleVersion):
        update_slide(store, reviewer, slide.id, slide.version, sample_id="S-2")
    cleared = update_slide(store, reviewer, slide.id, updated.version, microns_per_pixel=None)
    assert cleared.microns_per_pixel is None and cleared.sample_id == "S-1"
    assert audit_trail(store, slide.id)[-1].action == "update_slide"
    with pytest.raises(InvalidInput):
        update_slide(store, reviewer, slide.id, cleared.version)


# --- cells and reviews --------------------------------------------------------------------------


def test_list_cells_order_filters_pages(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    cells, total = list_cells(store, slide_id)
    assert total == 5
    assert [c.confidence for c in cells] == [0.40, 0.55, 0.70, 0.95, 0.99]  # least sure first
    assert [c.kind for c in cells] == ["red_cell"] * 5
    assert [c.confidence for c in list_cells(store, slide_id, offset=1, limit=2)[0]] == [0.55, 0.7]
    assert list_cells(store, slide_id, kind="platelet")[1] == 2
    assert list_cells(store, slide_id, kind="white_cell")[0][0].proposed_label is None
    assert [c.confidence for c in list_cells(store, slide_id, label="normal")[0]] == [
        0.40,
        0.95,
        0.99,
    ]
    flagged, n = list_cells(store, slide_id, needs_review=True)
    assert n == 2 and [c.confidence for c in flagged] == [0.40, 0.55]
    assert list_cells(store, slide_id, needs_review=False)[1] == 3
    # The label filter follows the current label; a review takes a cell out of the queue.
    low = flagged[0]
    review_cell(store, reviewer, slide_id, low.id, low.version, "spherocyte")
    assert [c.id for c in list_cells(store, slide_id, label="spherocyte")[0]] == [
        low.id,
        cells[2].id,
    ]
    assert list_cells(store, slide_id, label="normal")[1] == 2
    assert list_cells(store, slide_id, needs_review=True)[1] == 1
    assert list_cells(store, slide_id, reviewed=True)[1] == 1
    with pytest.raises(NotFound):
        list_cells(store, 999_999)
    with pytest.raises(InvalidInput):
        list_cells(store, slide_id, kind="monocyte")


def test_review_relabel_confirm_and_audit(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    cell = list_cells(store, slide_id)[0][0]
    assert cell.version == 1 and cell.label == "normal" and not cell.reviewed
    after = review_cell(store, reviewer, slide_id, cell.id, 1, "spherocyte")
    assert after.version == 2 and after.final_label == "spherocyte" and after.label == "spherocyte"
    assert after.proposed_label == "normal" and after.reviewed_by == "rae"
    assert after.reviewed_at is not None and after.reviewed_at.tzinfo == UTC
    confirmed = review_cell(store, reviewer, slide_id, cell.id, 2)  # confirm as is
    assert confirmed.version == 3 and confirmed.final_label == "spherocyte"
    trail = [e for e in audit_trail(store, slide_id) if e.cell_id == cell.id]
    assert [(e.action, e.from_value, e.to_value, e.user) for e in trail] == [
        ("relabel", "normal", "spherocyte", "rae"),
        ("confirm", "spherocyte", "spherocyte", "rae"),
    ]
    with pytest.raises(InvalidLabel):
        review_cell(store, reviewer, slide_id, cell.id, 3, "banana")
    # An explicit list of classes decides instead of the probabilities' keys.
    extra = review_cell(store, reviewer, slide_id, cell.id, 3, "burr_cell", [*CLASSES, "burr_cell"])
    assert extra.final_label == "burr_cell"
    white = list_cells(store, slide_id, kind="white_cell")[0][0]
    with pytest.raises(InvalidInput):
        review_cell(store, reviewer, slide_id, white.id, white.version)
    with pytest.raises(NotFound):
        review_cell(store, reviewer, slide_id + 1, cell.id, 4)


def test_stale_version_changes_nothing(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    cell = list_cells(store, slide_id)[0][0]
    review_cell(store, reviewer, slide_id, cell.id, cell.version, "spherocyte")
    before = snapshot(store)
    trail = audit_trail(store, slide_id)
    with pytest.raises(StaleVersion):
        review_cell(store, reviewer, slide_id, cell.id, cell.version, "target_cell")
    with pytest.raises(StaleVersion):
        review_cell(store, reviewer, slide_id, cell.id, cell.version)
    assert snapshot(store) == before  # the slide's version bump was rolled back too
    assert audit_trail(store, slide_id) == trail
    assert get_cell(store, slide_id, cell.id).final_label == "spherocyte"
    assert StaleVersion.http_status == 409 and SlideSignedOff.http_status == 409


def test_two_instances_race_one_wins(store: Store, reviewer: User, module_url: str) -> None:
    slide_id = slide_with_field(store, reviewer)
    cells = red_cells(store, slide_id)[:3]
    instances = [open_store(module_url) for _ in range(2)]
    try:
        for cell in cells:
            barrier = threading.Barrier(2)
            outcome: list[str] = []

            def review(
                s: Store,
                label: str,
                cell_id: int = cell.id,
                barrier: threading.Barrier = barrier,
                outcome: list[str] = outcome,
            ) -> None:
                barrier.wait()
                try:
                    review_cell(s, reviewer, slide_id, cell_id, 1, label)
                    outcome.append(label)
                except StaleVersion:
                    outcome.append("stale")

            threads = [
                threading.Thread(target=review, args=(s, label))
                for s, label in zip(instances, ("spherocyte", "target_cell"), strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcome) in (["spherocyte", "stale"], ["stale", "target_cell"])
            winner = next(o for o in outcome if o != "stale")
            now = get_cell(store, slide_id, cell.id)
            assert now.version == 2 and now.final_label == winner
            reviews = [e for e in audit_trail(store, slide_id) if e.cell_id == cell.id]
            assert [e.to_value for e in reviews] == [winner]
    finally:
        for s in instances:
            s.close()


RACE_REVIEW = """
    import sys, time, os
    from datetime import datetime, UTC
    from records.errors import StaleVersion
    from records.store import User, open_store, review_cell
    url, user_id, slide_id, cell_id, label, go = sys.argv[1:7]
    store = open_store(url)
    user = User(int(user_id), "rae", "reviewer", True, datetime.now(UTC))
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    try:
        review_cell(store, user, int(slide_id), int(cell_id), 1, label)
        print("won", flush=True)
    except StaleVersion:
        print("stale", flush=True)
"""


def test_two_processes_race_one_wins(
    store: Store, reviewer: User, module_url: str, tmp_path: Path
) -> None:
    slide_id = slide_with_field(store, reviewer)
    cell = red_cells(store, slide_id)[0]
    go = tmp_path / "go"
    procs = [
        _run_py(
            RACE_REVIEW,
            module_url,
            str(reviewer.id),
            str(slide_id),
            str(cell.id),
            label,
            str(go),
            wait=False,
        )
        for label in ("spherocyte", "target_cell")
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    results = [out.strip() for out, _ in outputs]
    assert sorted(results) == ["stale", "won"]
    winner = ("spherocyte", "target_cell")[results.index("won")]
    now = get_cell(store, slide_id, cell.id)
    assert now.version == 2 and now.final_label == winner
    assert [e.to_value for e in audit_trail(store, slide_id) if e.cell_id == cell.id] == [winner]


def test_viewer_cannot_write(store: Store, reviewer: User) -> None:
    viewer, token = create_user(store, "vic", "viewer")
    slide_id = slide_with_field(store, reviewer)
    cell = list_cells(store, slide_id)[0][0]
    before = snapshot(store)
    with pytest.raises(Forbidden):
        review_cell(store, viewer, slide_id, cell.id, cell.version, "spherocyte")
    with pytest.raises(Forbidden):
        review_cell(store, viewer, slide_id, cell.id, cell.version)
    with pytest.raises(Forbidden):
        create_slide(store, viewer, "S-2")
    with pytest.raises(Forbidden):
        add_field(store, viewer, slide_id, field_in([]))
    with pytest.raises(Forbidden):
        sign_off(store, viewer, slide_id, get_slide(store, slide_id).version)
    # A User object claiming another role changes nothing: the database's role decides.
    forged = User(viewer.id, viewer.name, "admin", True, viewer.created_at)
    with pytest.raises(Forbidden):
        delete_slide(store, forged, slide_id)
    assert snapshot(store) == before
    assert authenticate(store, token) == viewer  # viewers read
    assert list_cells(store, slide_id)[1] == 5
    assert Forbidden.http_status == 403


# --- sign-off -----------------------------------------------------------------------------------


def test_sign_off_refuses_writes_and_reopen_is_audited(
    store: Store, reviewer: User, admin: User
) -> None:
    slide_id = slide_with_field(store, reviewer)
    fid = get_slide(store, slide_id).fields[0].id
    cell = list_cells(store, slide_id)[0][0]
    seen = get_slide(store, slide_id).version
    review_cell(store, reviewer, slide_id, cell.id, 1)  # a change after `seen`
    with pytest.raises(StaleVersion):
        sign_off(store, reviewer, slide_id, seen)
    current = get_slide(store, slide_id).version
    signed = sign_off(store, reviewer, slide_id, current)
    assert signed.status == "signed_off" and signed.signed_off_by == "rae"
    assert signed.signed_off_at is not None and signed.version == current + 1
    before = snapshot(store)
    cell2 = list_cells(store, slide_id)[0][1]
    refused: list[Callable[[], object]] = [
        lambda: review_cell(store, reviewer, slide_id, cell2.id, cell2.version, "spherocyte"),
        lambda: review_cell(store, reviewer, slide_id, cell.id, 2),
        lambda: add_field(store, reviewer, slide_id, field_in([red("normal", 0.9)])),
        lambda: remove_field(store, reviewer, slide_id, fid),
        lambda: update_slide(store, reviewer, slide_id, signed.version, notes="x"),
        lambda: delete_slide(store, admin, slide_id),
        lambda: sign_off(store, reviewer, slide_id, signed.version),
    ]
    for write in refused:
        with pytest.raises(SlideSignedOff):
            write()
    assert snapshot(store) == before
    with pytest.raises(InvalidInput):
        reopen(store, admin, slide_id, "   ")
    reopened = reopen(store, admin, slide_id, "cell 12 was a platelet clump")
    assert reopened.status == "open" and reopened.signed_off_by is None
    with pytest.raises(SlideNotSignedOff):
        reopen(store, admin, slide_id, "again")
    last = audit_trail(store, slide_id)[-1]
    assert (last.action, last.user, last.from_value, last.to_value) == (
        "reopen",
        "ada",
        "signed_off",
        "open",
    )
    assert last.detail["reason"] == "cell 12 was a platelet clump"
    assert last.detail["signed_off_by"] == "rae"
    actions = [e.action for e in audit_trail(store, slide_id)]
    assert actions == ["create_slide", "add_field", "confirm", "sign_off", "reopen"]
    review_cell(store, reviewer, slide_id, cell2.id, cell2.version, "spherocyte")  # writable again


# --- counts and export ------------------------------------------------------------------------


def test_counts_follow_reviews(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    add_field(
        store,
        reviewer,
        slide_id,
        field_in([red("schistocyte", 0.8), red("normal", 0.6, needs_review=True)], "b.png"),
    )
    counts = slide_counts(store, slide_id)
    assert counts["classes"] == CLASSES
    assert counts["counts"] == {"normal": 3, "spherocyte": 1, "target_cell": 1, "schistocyte": 1}
    assert counts["cells_counted"] == 6 and counts["red_cells"] == 7  # one at the border
    assert counts["white_cells"] == 1 and counts["platelets"] == 2 and counts["fields"] == 2
    assert counts["needs_review_remaining"] == 3 and counts["reviewed"] == 0
    assert counts["percentages"]["normal"] == pytest.approx(50.0)
    assert counts["grades"]["spherocyte"] == "2+"  # 16.7 % on the spherocyte scale
    assert "normal" not in counts["grades"]

    flagged = list_cells(store, slide_id, needs_review=True)[0]
    for cell in flagged:
        review_cell(store, reviewer, slide_id, cell.id, cell.version, "spherocyte")
    counts = slide_counts(store, slide_id)
    assert counts["counts"] == {"normal": 1, "spherocyte": 4, "target_cell": 0, "schistocyte": 1}
    assert counts["cells_counted"] == 6
    assert counts["reviewed"] == 3 and counts["relabelled"] == 3
    assert counts["needs_review_remaining"] == 0
    assert counts["grades"]["spherocyte"] == "3+"
    # Labels outside the classes given are added, never dropped.
    given = slide_counts(store, slide_id, classes=["normal", "spherocyte"])
    assert given["counts"] == {"normal": 1, "spherocyte": 4, "schistocyte": 1}
    with pytest.raises(NotFound):
        slide_counts(store, 999_999)


def test_reviewed_cells_for_export(store: Store, reviewer: User) -> None:
    a = slide_with_field(store, reviewer)
    b = slide_with_field(store, reviewer)
    f2 = add_field(store, reviewer, b, field_in([red("normal", 0.3)], "b2.png", b"second"))
    for slide_id, cell in ((a, red_cells(store, a)[0]), (b, red_cells(store, b)[0])):
        review_cell(store, reviewer, slide_id, cell.id, cell.version, "target_cell")
    only = list(reviewed_cells(store, reviewed_only=True))
    assert [(c.slide_id, c.label, c.reviewed_by) for c in only] == [
        (a, "target_cell", "rae"),
        (b, "target_cell", "rae"),
    ]
    assert only[0].sample_id == "S-0001" and only[0].image == b"\x89PNG..."
    assert only[0].box[2] - only[0].box[0] == 8
    everything = list(reviewed_cells(store, reviewed_only=False))
    assert len(everything) == 5 + 5 + 1
    assert {c.image for c in everything if c.field_id == f2.id} == {b"second"}
    assert {c.label for c in everything if c.reviewed_by is None} <= set(CLASSES)
    sign_off(store, reviewer, a, get_slide(store, a).version)
    assert {c.slide_id for c in reviewed_cells(store, False, signed_off_only=True)} == {a}


def test_timestamps_are_aware_utc(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    stamps = [
        get_slide(store, slide_id).created_at,
        get_slide(store, slide_id).fields[0].created_at,
    ]
    stamps += [e.at for e in audit_trail(store, slide_id)]
    assert all(s.tzinfo is not None and s.utcoffset() == UTC.utcoffset(None) for s in stamps)
    assert abs(time.time() - stamps[0].timestamp()) < 120


# --- the CLI ----------------------------------------------------------------------------------


def test_cli(new_url: Callable[[], str], capsys: pytest.CaptureFixture[str]) -> None:
    url = new_url()
    assert cli_main(["create-user", "ann", "--database", url]) == 2  # not upgraded yet
    assert "python -m records upgrade" in capsys.readouterr().err
    assert cli_main(["upgrade", "--database", url]) == 0
    assert f"at schema revision {Store.head_revision()}" in capsys.readouterr().out
    assert cli_main(["upgrade", "--database", url]) == 0
    capsys.readouterr()
    assert cli_main(["create-user", "ann", "--role", "admin", "--database", url]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert "will not be shown again" in err and token and token not in err
    with open_store(url) as s:
        user = authenticate(s, token)
        assert user is not None and user.role == "admin"
    assert cli_main(["create-user", "ann", "--database", url]) == 1  # exists
    assert "exists" in capsys.readouterr().err
    assert cli_main(["list-users", "--database", url]) == 0
    assert capsys.readouterr().out.startswith("ann\tadmin\tactive\t")


def test_cli_bad_database(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("nosuchdb://x", "postgresql://postgres@127.0.0.1:1/x", "::"):
        assert cli_main(["list-users", "--database", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_default_url_and_module_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RBC_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["upgrade"]) == 0
    assert (tmp_path / "data" / "rbc.sqlite3").is_file()
    capsys.readouterr()
    env_db = tmp_path / "env.sqlite3"
    done = subprocess.run(
        [sys.executable, "-m", "records", "upgrade"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "RBC_DATABASE_URL": f"sqlite:///{env_db}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert env_db.is_file()


# --- views: what a page shows, read at one state ------------------------------------------------


def test_a_view_reads_one_state_of_the_slide(store: Store, reviewer: User) -> None:
    """Every query of a view's transaction sees the same state: a review committed between two
    of them is not half in the answer (PostgreSQL's default would show it to the second)."""
    slide_id = slide_with_field(store, reviewer)
    cell = red_cells(store, slide_id)[0]
    with store.snapshot() as session:
        before = session.scalar(text("SELECT version FROM slides WHERE id = :id"), {"id": slide_id})
        review_cell(store, reviewer, slide_id, cell.id, cell.version, "spherocyte")
        after = session.scalar(text("SELECT version FROM slides WHERE id = :id"), {"id": slide_id})
        reviewed = session.scalar(
            text("SELECT count(*) FROM cells WHERE slide_id = :id AND final_label IS NOT NULL"),
            {"id": slide_id},
        )
    assert after == before and reviewed == 0
    assert get_slide(store, slide_id).version == before + 1  # and it is there once read again


def test_slide_view_sheet_and_field_cells(store: Store, reviewer: User) -> None:
    slide_id = slide_with_field(store, reviewer)
    view = slide_view(store, slide_id)
    assert view.counts == slide_counts(store, slide_id)
    assert view.slide == get_slide(store, slide_id)
    assert view.warnings == grading_warnings(view.counts, view.slide.fields)
    assert any(f"at least {MIN_CELLS_FOR_GRADING}" in w for w in view.warnings)
    detail, cells = slide_sheet(store, slide_id)
    assert [c.id for c in cells] == sorted(c.id for c in cells)  # one field: by id
    assert {c.kind for c in cells} == {"red_cell", "white_cell", "platelet"}
    by_kind = field_cells(store, slide_id, detail.fields[0].id)
    assert sorted(c.id for k in by_kind for c in by_kind[k]) == [c.id for c in cells]
    assert by_kind["red_cell"] == red_cells(store, slide_id)  # least confident first
    with pytest.raises(NotFound):
        slide_view(store, slide_id + 1000)


def test_a_field_result_is_kept_as_the_analysis_returned_it(store: Store, reviewer: User) -> None:
    """core's FieldResult into the records (FieldInput.analysed): every cell with its kind, and
    the result without its cells as the field's summary (no migration for a new summary key)."""
    from core.smear.result import (
        FieldCell,
        FieldObject,
        FieldResult,
        FieldSummary,
        SmearFamiliarity,
        SmearFocus,
        SmearScale,
    )

    def cell(i: int, label: str, at_border: bool = False) -> FieldCell:
        probabilities = {"normal": 0.1, "spherocyte": 0.1, label: 0.8}
        return FieldCell(
            id=i, x=10.0 * i, y=20.0, box=(0, 0, 5, 5), at_border=at_border,
            counted=not at_border, label=label, confidence=0.8, probabilities=probabilities,
            needs_review=label != "normal",
        )  # fmt: skip

    white = FieldObject(id=1, kind="white_cell", x=50, y=50, box=(40, 40, 60, 60),
                        at_border=False, confidence=0.9)  # fmt: skip
    result = FieldResult.tally(
        [cell(1, "normal"), cell(2, "spherocyte"), cell(3, "normal", at_border=True)],
        ["normal", "spherocyte"],
        white_cells=[white], platelets=[], width=100, height=80,
        scale=SmearScale(microns_per_pixel=0.1, known=True, estimated=False,
                         training_microns_per_pixel=0.19),
        focus=SmearFocus(sharpness=None, threshold=None, out_of_focus=False),
        familiarity=SmearFamiliarity.unknown(), other_objects=1, detector="learned:detector",
        class_colours={"normal": "#4daf4a", "spherocyte": "#e41a1c"},
        timings_ms={"detect": 1.0, "total": 2.0}, notes=["a note"],
    )  # fmt: skip
    assert result.counts == {"normal": 1, "spherocyte": 1} and result.needs_review == 1
    slide = create_slide(store, reviewer, "S-9", microns_per_pixel=0.1)
    kept = add_field(
        store, reviewer, slide.id,
        FieldInput.analysed(
            result, filename="f.png", image=b"png", media_type="image/png",
            classifier_name="clf", classifier_sha256="a" * 64, detector_sha256="b" * 64,
            analysis={"review_threshold": 0.9, "tta_views": 1},
        ),
    )  # fmt: skip
    assert set(kept.summary) == set(FieldSummary.model_fields) | {"review_threshold", "tta_views"}
    assert kept.cells_counted == 2 and kept.notes == ["a note"] and not kept.unfamiliar
    assert kept.detector_name == "learned:detector" and kept.microns_per_pixel == 0.1
    cells = list_cells(store, slide.id, limit=10)[0]
    assert sorted(c.label for c in cells if c.label) == ["normal", "normal", "spherocyte"]
    assert [c.kind for c in list_cells(store, slide.id, kind="white_cell")[0]] == ["white_cell"]
