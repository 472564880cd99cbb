"""Errors of the records store. Each carries the HTTP status the service should answer with
(`http_status`), so that app/ maps them in one place."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of what a database error says (the driver's own error where SQLAlchemy
    wraps one), for one-line messages; the error's type when it says nothing."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


class RecordsError(Exception):
    """Base class of every error the store raises on purpose."""

    http_status = 500


class InvalidInput(RecordsError, ValueError):
    """The request is malformed: an unknown role or kind, an empty name, a bad box..."""

    http_status = 422


class InvalidLabel(InvalidInput):
    """A review names a label that is not one of the slide's classes."""


class Forbidden(RecordsError):
    """The user's role (or an inactive account) does not allow this."""

    http_status = 403


class NotFound(RecordsError, LookupError):
    """No such slide, field, cell or user (or not on that slide)."""

    http_status = 404


class SlideDeleted(NotFound):
    """The slide was deleted; its audit trail is kept (`audit_trail(..., deleted=True)`)."""


class Conflict(RecordsError):
    """The request clashes with the record's current state."""

    http_status = 409


class StaleVersion(Conflict):
    """The version given is not the record's current one: someone changed it since it was read.
    Nothing was changed; read it again."""


class SlideSignedOff(Conflict):
    """The slide is signed off and read-only until it is reopened."""


class SlideNotSignedOff(Conflict):
    """Reopening a slide that is open."""


class DuplicateName(Conflict):
    """A user of that name exists."""


class DatabaseUnavailable(RecordsError):
    """The database URL is malformed, names a driver that is not installed, or the server cannot
    be reached. The message is one line, without the password."""

    http_status = 503


class SchemaOutOfDate(RecordsError):
    """The database is not at the schema this code expects (run `python -m records upgrade`)."""

    http_status = 503
