"""Users and their tokens (only the token's hash is kept)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.exc import IntegrityError

from records import schema as db
from records.database import Store
from records.entities import User
from records.errors import (
    DuplicateName,
    InvalidInput,
    NotFound,
)
from records.schema import ROLES, utcnow
from records.steps import user_record
from records.validation import checked_text


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_user(store: Store, name: str, role: str) -> tuple[User, str]:
    """A new active user and their API token. The token is returned once and only its sha256 is
    stored. Raises InvalidInput (empty name, unknown role) or DuplicateName."""
    name = checked_text(name, "user name", 64)
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    row = db.User(
        name=name, role=role, token_sha256=_token_hash(token), created_at=utcnow(), active=True
    )
    try:
        with store.writing() as session:
            if session.scalar(select(db.User.id).where(db.User.name == name)) is not None:
                raise DuplicateName(f"a user named {name!r} exists")
            session.add(row)
            session.flush()
            user = user_record(row)
    except IntegrityError:  # a concurrent create of the same name
        raise DuplicateName(f"a user named {name!r} exists") from None
    return user, token


def authenticate(store: Store, token: str) -> User | None:
    """The active user holding `token`, else None (looked up by the token's sha256)."""
    if not token:
        return None
    with store.reading() as session:
        row = session.scalar(select(db.User).where(db.User.token_sha256 == _token_hash(token)))
        return user_record(row) if row is not None and row.active else None


def count_users(store: Store) -> int:
    """How many users there are (active or not)."""
    with store.reading() as session:
        return int(session.scalar(select(func.count(db.User.id))) or 0)


def list_users(store: Store) -> list[User]:
    """Every user, by name."""
    with store.reading() as session:
        return [user_record(r) for r in session.scalars(select(db.User).order_by(db.User.name))]


def set_user_active(store: Store, name: str, active: bool) -> User:
    """Deactivate (their token stops working) or reactivate a user. NotFound if unknown."""
    with store.writing() as session:
        row = session.scalar(select(db.User).where(db.User.name == name))
        if row is None:
            raise NotFound(f"no user {name!r}")
        row.active = active
        session.flush()
        return user_record(row)


def find_user(store: Store, name: str) -> User | None:
    """The user named `name` (active or not), else None."""
    with store.reading() as session:
        row = session.scalar(select(db.User).where(db.User.name == name))
        return user_record(row) if row is not None else None
