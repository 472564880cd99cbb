"""`python -m records backup` and `delete-slides`, and the URL forms a hosted PostgreSQL gives.

SQLite throughout; the URL test also connects to the local PostgreSQL (127.0.0.1:5432, database
`test`) when it answers, and must when $RBC_TEST_DATABASE_URL is set (CI).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from records import schema as db
from records.__main__ import main
from records.errors import DatabaseUnavailable
from records.schema import utcnow
from records.store import (
    Store,
    User,
    add_field,
    audit_trail,
    create_slide,
    create_user,
    default_url,
    get_slide,
    list_slides,
    open_store,
    sign_off,
)
from tests.records.test_records import field_in, standard_cells

PG_REQUIRED = bool(os.environ.get("RBC_TEST_DATABASE_URL"))


# --- the URL forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:5432/test"],
)
def test_hosted_postgres_url_forms_use_psycopg(url: str) -> None:
    """Render's connectionString (and Heroku-style `postgres://`) map to psycopg 3."""
    try:
        store = open_store(url)
    except DatabaseUnavailable as exc:
        assert "postgresql+psycopg://" in str(exc), exc  # mapped; only the server is missing
        if PG_REQUIRED:
            pytest.fail(f"RBC_TEST_DATABASE_URL is set but {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    with store:
        assert store.dialect == "postgresql"
        assert store.engine.url.drivername == "postgresql+psycopg"
        assert store.engine.driver == "psycopg"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_hosted_url_forms_without_a_server(scheme: str) -> None:
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach database postgresql\+psycopg://"):
        open_store(f"{scheme}://u:secret@127.0.0.1:1/x")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = default_url(tmp_path / "data")
    (tmp_path / "data").mkdir()
    with open_store(url) as store:
        store.upgrade()
    return url


@pytest.fixture
def store(db_url: str) -> Any:
    with open_store(db_url) as s:
        yield s


@pytest.fixture
def admin(store: Store) -> User:
    return create_user(store, "ada", "admin")[0]


def new_slide(store: Store, user: User, sample: str, age_days: float, signed: bool = False) -> int:
    slide = create_slide(store, user, sample)
    add_field(store, user, slide.id, field_in(standard_cells()))
    if signed:
        sign_off(store, user, slide.id, get_slide(store, slide.id).version)
    with store.engine.begin() as conn:
        conn.execute(
            update(db.Slide)
            .where(db.Slide.id == slide.id)
            .values(created_at=utcnow() - timedelta(days=age_days))
        )
    return slide.id


def count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# --- backup ---------------------------------------------------------------------------------


def test_backup_while_another_connection_writes(
    db_url: str, store: Store, admin: User, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        new_slide(store, admin, f"S-{i}", 1)
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with open_store(db_url) as writer:
                user = create_user(writer, "wes", "reviewer")[0]
                while not stop.is_set() or len(written) < 5:
                    slide = create_slide(writer, user, f"W-{len(written)}")
                    add_field(writer, user, slide.id, field_in(standard_cells()))
                    written.append(slide.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while len(written) < 2 and thread.is_alive():
            stop.wait(0.01)
        out = tmp_path / "backup" / "rbc-copy.sqlite3"
        out.parent.mkdir()
        assert main(["backup", "--database", db_url, "--out", str(out)]) == 0
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert "backed up to" in capsys.readouterr().out
    assert not out.with_name(out.name + ".partial").exists()
    # A standalone, intact file: no WAL beside it, every field with its cells.
    raw = sqlite3.connect(out)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        raw.close()
    with open_store(f"sqlite:///{out}") as copy:
        assert copy.current_revision() == Store.head_revision()
        assert copy.upgrade() == Store.head_revision()
        copy.check_current()
        slides, total = list_slides(copy, limit=1000)
        assert 3 + 2 <= total <= 3 + len(written)
        # Consistent: a field is there with all its cells or not at all (the writer adds a
        # slide, then its field, in two transactions: the last slide may have none yet).
        fields = [f for s in slides for f in get_slide(copy, s.id).fields]
        assert total - 1 <= len(fields) <= total
        assert all(f.cell_count == len(standard_cells()) for f in fields)
        assert count(copy, "cells") == len(fields) * len(standard_cells())


def test_backup_refusals(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.sqlite3"
    out.write_bytes(b"old")
    assert main(["backup", "--database", db_url, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert main(["backup", "--database", db_url, "--out", str(out), "--overwrite"]) == 0
    assert out.stat().st_size > 3
    # A missing file is not created.
    missing = tmp_path / "none" / "rbc.sqlite3"
    assert main(["backup", "--database", f"sqlite:///{missing}", "--out", str(out)]) == 2
    assert "no SQLite database" in capsys.readouterr().err and not missing.parent.exists()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_backup_of_postgres_prints_pg_dump(
    scheme: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.dump"
    url = f"{scheme}://rbc:s3cret@db.example:5432/records?connect_timeout=5"
    assert main(["backup", "--database", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pg_dump --format=custom" in err and "pg_restore" in err
    assert "'postgresql://rbc@db.example:5432/records'" in err
    assert "s3cret" not in err and not out.exists()


# --- delete-slides ----------------------------------------------------------------------------


def test_delete_slides_older_than(
    store: Store, admin: User, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old_open = new_slide(store, admin, "OLD-OPEN", 40)
    old_signed = new_slide(store, admin, "OLD-SIGNED", 40, signed=True)
    young = new_slide(store, admin, "YOUNG", 5, signed=True)
    base = ["delete-slides", "--database", db_url, "--older-than", "30", "--admin", "ada"]

    # A dry run lists them and changes nothing.
    audit_before = count(store, "audit")
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "OLD-OPEN" in out and "OLD-SIGNED" in out and "YOUNG" not in out
    assert "2 slides" in out and "would be deleted" in out
    assert list_slides(store)[1] == 3 and count(store, "audit") == audit_before

    # Only the signed-off ones: reopened with the retention reason, then deleted; both audited.
    assert main([*base, "--status", "signed_off"]) == 0
    assert "deleted\t" in capsys.readouterr().out
    assert {s.id for s in list_slides(store)[0]} == {old_open, young}
    trail = [(e.action, e.user, e.detail) for e in audit_trail(store, old_signed)]
    actions = [a for a, _, _ in trail]
    assert actions[-2:] == ["reopen", "delete_slide"]
    assert trail[-2][1] == trail[-1][1] == "ada"
    assert trail[-2][2]["reason"] == "retention: older than 30 days"
    assert trail[-1][2]["fields"] == 1 and trail[-1][2]["cells"] == len(standard_cells())

    # Then everything older than 30 days; the fields, cells and images went with the slides.
    assert main(base) == 0
    assert [s.id for s in list_slides(store)[0]] == [young]
    assert count(store, "fields") == 1 and count(store, "cells") == len(standard_cells())
    assert [e.action for e in audit_trail(store, old_open)][-1] == "delete_slide"
    assert main(base) == 0
    assert "no slides created before" in capsys.readouterr().out


def test_delete_slides_needs_an_active_admin(
    store: Store, admin: User, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    new_slide(store, admin, "OLD", 40)
    create_user(store, "rae", "reviewer")
    base = ["delete-slides", "--database", db_url, "--older-than", "30"]
    for name in ("rae", "nobody"):
        assert main([*base, "--admin", name]) == 2
        assert "not an active admin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base[:-1], "0", "--admin", "ada"])
    assert list_slides(store)[1] == 1
