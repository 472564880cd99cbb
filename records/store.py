"""The laboratory's records: users, slides, their fields and cells, reviews, sign-off, audit.

The one import point of the records' functions (`from records.store import ...`): they live, one
concern a module, in database.py (engine, upgrade, transactions, backups), entities.py (what
they return and take), users.py, slides.py (the slide aggregate), counts.py, audit.py,
export.py and views.py (what a slide's views read, each in one transaction, and the grading
warnings), activations.py and teaching.py (the served model's switches, the "teach the model"
jobs), on validation.py and steps.py (what every write shares).

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
  raises `StaleVersion` and the whole transaction (slide bump included) is rolled back; writes
  on many cells at once (a sign-off, accepting the rest of a field) are optimistic on the
  slide's `version` instead;
- every change writes an audit row in the same transaction.

SQLite (the embedded default): WAL journal, foreign keys on, a busy timeout, and writes start with
`BEGIN IMMEDIATE` (reads with a plain `BEGIN`), so that concurrent writers from several processes
wait for each other instead of failing half-way.
"""

from __future__ import annotations

from records.activations import (
    latest_activation_id,
    recent_activations,
    record_activation,
)
from records.audit import (
    audit_trail,
)
from records.counts import (
    slide_counts,
)
from records.database import (
    MIGRATIONS_DIR,
    PG_CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_MS,
    FaultHook,
    Store,
    backup_sqlite,
    default_url,
    open_store,
)
from records.entities import (
    UNSET,
    Activation,
    AuditEntry,
    CellInput,
    CellRecord,
    ExportCell,
    FieldInput,
    FieldRecord,
    ProposalsAccepted,
    QueuedCell,
    SlideDetail,
    SlideRecord,
    TeachJob,
    User,
)
from records.export import (
    reviewed_cells,
)
from records.slides import (
    accept_proposals,
    add_field,
    create_slide,
    delete_slide,
    field_image,
    get_cell,
    get_slide,
    list_cells,
    list_slides,
    remove_field,
    reopen,
    review_cell,
    sign_off,
    slides_created_before,
    update_slide,
)
from records.steps import (
    ADMINS,
    WRITERS,
)
from records.teaching import (
    beat,
    claim_teach_job,
    finish_teach_job,
    interrupt_teach_job,
    request_teaching,
    take_back_stale,
    teach_job,
    teach_jobs,
)
from records.users import (
    authenticate,
    count_users,
    create_user,
    find_user,
    list_users,
    set_user_active,
)
from records.validation import (
    MAX_PAGE,
)
from records.views import (
    MIN_CELLS_FOR_GRADING,
    MIN_CELLS_FOR_SCHISTOCYTES,
    SPOT_CHECK_EVERY,
    SlideView,
    field_cells,
    grading_warnings,
    review_queue,
    slide_sheet,
    slide_view,
    teaching_order,
)

__all__ = [
    "ADMINS",
    "MAX_PAGE",
    "MIGRATIONS_DIR",
    "MIN_CELLS_FOR_GRADING",
    "MIN_CELLS_FOR_SCHISTOCYTES",
    "PG_CONNECT_TIMEOUT_S",
    "SPOT_CHECK_EVERY",
    "SQLITE_BUSY_TIMEOUT_MS",
    "UNSET",
    "WRITERS",
    "Activation",
    "AuditEntry",
    "CellInput",
    "CellRecord",
    "ExportCell",
    "FaultHook",
    "FieldInput",
    "FieldRecord",
    "ProposalsAccepted",
    "QueuedCell",
    "SlideDetail",
    "SlideRecord",
    "SlideView",
    "Store",
    "TeachJob",
    "User",
    "accept_proposals",
    "add_field",
    "audit_trail",
    "authenticate",
    "backup_sqlite",
    "beat",
    "claim_teach_job",
    "count_users",
    "create_slide",
    "create_user",
    "default_url",
    "delete_slide",
    "field_cells",
    "field_image",
    "find_user",
    "finish_teach_job",
    "get_cell",
    "get_slide",
    "grading_warnings",
    "interrupt_teach_job",
    "latest_activation_id",
    "list_cells",
    "list_slides",
    "list_users",
    "open_store",
    "recent_activations",
    "record_activation",
    "remove_field",
    "reopen",
    "request_teaching",
    "review_cell",
    "review_queue",
    "reviewed_cells",
    "set_user_active",
    "sign_off",
    "slide_counts",
    "slide_sheet",
    "slide_view",
    "slides_created_before",
    "take_back_stale",
    "teach_job",
    "teach_jobs",
    "teaching_order",
    "update_slide",
]
