"""Teach jobs: the service's "teach the model" requests, and their runs (app/teaching.py).

A job is one run of `python -m training adapt` into a new model version. Its row goes
queued -> running -> done | failed. One job at a time per database: a request while another is
queued or running is refused (Conflict). Any service instance may run it: a runner claims the
oldest queued job in one transaction (PostgreSQL: `FOR UPDATE SKIP LOCKED`; both: a conditional
`UPDATE ... WHERE state = 'queued'` whose row count says who won), then writes a heartbeat
every few seconds, each conditional on still being the job's runner. A running job whose
heartbeat is older than the stale limit (its instance died or stopped) is taken back by any
runner: queued again after a first interruption, failed after a second.

Nothing here imports torch, training or the service.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Select, select, text, update
from sqlalchemy.orm import Session

from records import schema as db
from records.database import Store
from records.entities import TeachJob, User
from records.errors import Conflict, InvalidInput, NotFound
from records.schema import utcnow
from records.steps import ADMINS, acting_user
from records.validation import checked_text

# Any constant 64-bit key: serialises teach requests on one PostgreSQL database (SQLite's write
# transactions are serial already), so that two requests cannot both see "none running".
REQUEST_LOCK_KEY: Final = 0x7262635F74656163  # "rbc_teac"
MAX_RUNS: Final = 2  # a job interrupted on its second run is failed, not queued a third time
ACTIVE: Final = ("queued", "running")


def _record(row: db.TeachJob, user_name: str) -> TeachJob:
    return TeachJob(
        id=row.id,
        name=row.name,
        state=row.state,
        stage=row.stage,
        progress=row.progress,
        message=row.message,
        version_id=row.version_id,
        attempts=row.attempts,
        runner=row.runner,
        requested_by=user_name,
        requested_at=row.requested_at,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        finished_at=row.finished_at,
    )


def _with_user() -> Select[db.TeachJob, str]:
    return select(db.TeachJob, db.User.name).join(db.User, db.User.id == db.TeachJob.requested_by)


def _get(session: Session, job_id: int) -> TeachJob:
    found = session.execute(_with_user().where(db.TeachJob.id == job_id)).one_or_none()
    if found is None:
        raise NotFound(f"no teach job {job_id}")
    row, name = found
    return _record(row, name)


def request_teaching(store: Store, user: User, name: str) -> TeachJob:
    """A new queued job that writes the version `name` (admins only: Forbidden otherwise);
    Conflict when a job is queued or running already. Committed when this returns. Whether
    `name` is free is the caller's to check (the versions are folders, not rows)."""
    name = checked_text(name, "version name", 128)
    with store.writing() as session:
        if store.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REQUEST_LOCK_KEY})
        who = acting_user(session, user, ADMINS, "teach the model")
        busy = session.scalars(
            select(db.TeachJob)
            .where(db.TeachJob.state.in_(ACTIVE))
            .order_by(db.TeachJob.id)
            .limit(1)
        ).first()
        if busy is not None:
            raise Conflict(
                f"teach job {busy.id} is {busy.state}: one job at a time (follow it at "
                f"/models/teach/{busy.id})"
            )
        row = db.TeachJob(
            name=name,
            state="queued",
            stage="queued",
            progress=0.0,
            attempts=0,
            requested_by=who.id,
            requested_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return _record(row, who.name)


def teach_jobs(store: Store, limit: int = 20) -> list[TeachJob]:
    """The newest jobs, newest first."""
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    with store.reading() as session:
        rows = session.execute(_with_user().order_by(db.TeachJob.id.desc()).limit(limit)).all()
        return [_record(row, name) for row, name in rows]


def teach_job(store: Store, job_id: int) -> TeachJob:
    """One job; NotFound when there is none of that id."""
    with store.reading() as session:
        return _get(session, job_id)


# --- runners ------------------------------------------------------------------------------------


def claim_teach_job(store: Store, runner: str) -> TeachJob | None:
    """The oldest queued job, now running under `runner` (its run counted, its heartbeat now);
    None when none is queued or another runner took it first."""
    runner = checked_text(runner, "runner", 200)
    t = db.TeachJob
    with store.writing() as session:
        oldest = select(t.id).where(t.state == "queued").order_by(t.id).limit(1)
        if store.dialect == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        job_id = session.scalar(oldest)
        if job_id is None:
            return None
        now = utcnow()
        claimed = session.execute(
            update(t)
            .where(t.id == job_id, t.state == "queued")
            .values(
                state="running",
                runner=runner,
                attempts=t.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                stage="starting",
                progress=0.0,
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return _get(session, job_id)


def beat(store: Store, job_id: int, runner: str, stage: str, progress: float) -> bool:
    """The runner's heartbeat, with where the job stands; False when `runner` no longer runs it
    (it was taken back as stale): the runner must then stop."""
    t = db.TeachJob
    with store.writing() as session:
        done = session.execute(
            update(t)
            .where(t.id == job_id, t.state == "running", t.runner == runner)
            .values(
                heartbeat_at=utcnow(),
                stage=stage[:200],
                progress=min(1.0, max(0.0, float(progress))),
            )
            .execution_options(synchronize_session=False)
        )
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def finish_teach_job(
    store: Store,
    job_id: int,
    runner: str,
    *,
    version_id: str | None = None,
    error: str | None = None,
) -> TeachJob | None:
    """Done (with the new version's id) or failed (with `error`, one line); None when `runner`
    no longer runs the job (nothing is written)."""
    if (version_id is None) == (error is None):
        raise InvalidInput("a job finishes with a version or with an error, not both")
    t = db.TeachJob
    values: dict[str, object] = {"finished_at": utcnow(), "heartbeat_at": utcnow()}
    if version_id is not None:
        values.update(state="done", version_id=version_id, stage="done", progress=1.0)
    else:
        values.update(state="failed", message=(error or "")[:2000], stage="failed")
    with store.writing() as session:
        done = session.execute(
            update(t)
            .where(t.id == job_id, t.state == "running", t.runner == runner)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return _get(session, job_id)


def interrupt_teach_job(store: Store, job_id: int, runner: str, why: str) -> TeachJob | None:
    """The runner stops before the job ended (its instance shuts down): queued again, or failed
    when this was its last run. None when `runner` no longer runs it."""
    with store.writing() as session:
        row = session.get(db.TeachJob, job_id, with_for_update=True)
        if row is None or row.state != "running" or row.runner != runner:
            return None
        _take_back(row, why, utcnow())
        session.flush()
        return _get(session, job_id)


def take_back_stale(store: Store, stale_s: float) -> list[TeachJob]:
    """Running jobs whose heartbeat is older than `stale_s` seconds: queued again ("interrupted;
    started again") after their first run, failed after their second. Returns them as they are
    now."""
    t = db.TeachJob
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_s)
    with store.writing() as session:
        stale = (
            select(t)
            .where(t.state == "running", t.heartbeat_at < cutoff)
            .order_by(t.id)
            .with_for_update(skip_locked=True)  # ignored by SQLite, whose writes are serial
        )
        rows = list(session.scalars(stale))
        for row in rows:
            _take_back(row, f"no heartbeat for more than {stale_s:g} s", now)
        session.flush()
        return [_get(session, row.id) for row in rows]


def _take_back(row: db.TeachJob, why: str, now: datetime) -> None:
    if row.attempts >= MAX_RUNS:
        row.state, row.stage, row.finished_at = "failed", "failed", now
        row.message = f"interrupted twice ({why}); not started again: request it again"
    else:
        row.state, row.stage, row.progress = "queued", "queued again", 0.0
        row.message = f"interrupted ({why}); started again"
    row.runner = None
