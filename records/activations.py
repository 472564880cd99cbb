"""Which classifier version the service serves: one row per switch (activate or roll back), the
newest row winning. Every instance on one database follows the newest row (app/models.py); the
rows are only ever added, so the table is also the trail of who switched what, and when."""

from __future__ import annotations

from sqlalchemy import select

from records import schema as db
from records.database import Store
from records.entities import Activation, User
from records.errors import InvalidInput
from records.schema import MODEL_ACTIONS, utcnow
from records.steps import ADMINS, acting_user
from records.validation import checked_text


def _record(row: db.ModelActivation, user_name: str) -> Activation:
    return Activation(
        id=row.id,
        at=row.at,
        user=user_name,
        action=row.action,
        model_id=row.model_id,
        model_name=row.model_name,
        weights_sha256=row.weights_sha256,
    )


def record_activation(
    store: Store,
    user: User,
    model_id: str,
    model_name: str,
    weights_sha256: str,
    action: str = "activate",
) -> Activation:
    """A new activation row (admins only: Forbidden otherwise), committed when this returns."""
    if action not in MODEL_ACTIONS:
        raise InvalidInput(f"action {action!r} is not one of {', '.join(MODEL_ACTIONS)}")
    model_id = checked_text(model_id, "model id", 128)
    model_name = checked_text(model_name, "model name", 128)
    weights_sha256 = checked_text(weights_sha256, "weights sha256", 64)
    with store.writing() as session:
        who = acting_user(session, user, ADMINS, "switch the served model")
        row = db.ModelActivation(
            at=utcnow(),
            user_id=who.id,
            action=action,
            model_id=model_id,
            model_name=model_name,
            weights_sha256=weights_sha256,
        )
        session.add(row)
        session.flush()
        return _record(row, who.name)


def recent_activations(store: Store, limit: int = 2) -> list[Activation]:
    """The newest activations, newest first (the first is what the service serves)."""
    a = db.ModelActivation
    with store.reading() as session:
        rows = session.execute(
            select(a, db.User.name)
            .join(db.User, db.User.id == a.user_id)
            .order_by(a.id.desc())
            .limit(limit)
        ).all()
        return [_record(row, name) for row, name in rows]


def latest_activation_id(store: Store) -> int | None:
    """The newest activation's id (one indexed read: what instances poll), None when none."""
    with store.reading() as session:
        found = session.scalar(
            select(db.ModelActivation.id).order_by(db.ModelActivation.id.desc()).limit(1)
        )
        return None if found is None else int(found)
