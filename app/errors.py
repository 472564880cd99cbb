"""Domain errors of the service, and the one place where they become HTTP answers.

Every error body is `{"detail": "<plain words>"}`. Client mistakes get 4xx; a 500 means a bug here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from app.openapi import allowed_methods
from core.imageio import ImageError
from core.smear.analysis import SmearError, SmearTooLarge
from records.errors import RecordsError, first_line

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a client can act on; `status` is its HTTP code."""

    status = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class TooLarge(ServiceError):
    status = 413


class BadImage(ServiceError):
    """A field that cannot be analysed (no contrast...); bad files are core.imageio.ImageError."""

    status = 422


class UnknownClass(ServiceError):
    """A label sent back that is not a class of the served model (a stale page, another model)."""

    status = 422


class NotFoundError(ServiceError):
    """No such thing (a model version id that is not a folder of RBC_MODELS_DIR)."""

    status = 404


class Conflict(ServiceError):
    """The request clashes with the service's state or settings (switching a model version
    without RBC_MODELS_DIR, activating the active one, nothing to roll back to)."""

    status = 409


class ModelRefused(ServiceError):
    """A model version that cannot be served (a hash mismatch, a missing file, a bad card)."""

    status = 422


class NotReady(ServiceError):
    status = 503


class Busy(ServiceError):
    """Every slot for heavy work is taken and the wait for one ran out; try again later."""

    status = 503


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class BodyTimeout(ServiceError):
    """The request body did not arrive within the time allowed (a stalled or trickling client)."""

    status = 408


class ClientGone(ServiceError):
    """The client closed the connection; its work was stopped. Nobody reads this answer."""

    status = 499


class BodyTooLarge(StarletteHTTPException):
    """Raised while the request body streams in, once it passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request is larger than the {limit:,}-byte limit")


@contextmanager
def smear_errors() -> Iterator[None]:
    """A field that is too large once rescaled (413) or cannot be analysed (422); the same
    answer from POST /analyze/smear and POST /slides/{id}/fields. Bad files (core.imageio's
    ImageError) pass through to their own handler."""
    try:
        yield
    except SmearTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    except SmearError as exc:
        raise BadImage(str(exc)) from exc


def database_error_detail(exc: DBAPIError) -> str | None:
    """The one-line answer for a database that failed under a request (gone away, locked,
    timed out), or None when the error is a bug of ours (a constraint, bad SQL)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    return f"the records database did not answer ({first_line(exc)}); try again in a moment"


def error_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    merged = dict(headers or {})
    if status == 401:
        merged.setdefault("WWW-Authenticate", "Bearer")
    if status == 408:
        merged.setdefault("Connection", "close")
    return JSONResponse({"detail": detail}, status_code=status, headers=merged or None)


def _validation_detail(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is malformed"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    name = ".".join(loc) or "request"
    if first.get("type") == "missing":
        if name in ("file", "files"):
            return f"no image was sent: put it in the multipart/form-data field '{name}'"
        return f"the field '{name}' is missing"
    return f"the field '{name}' is invalid: {first.get('msg', 'bad value')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return error_response(exc.status, exc.detail)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, ClientGone):
            log.info("client disconnected; its request was stopped")
        return error_response(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RecordsError)
    async def _records_error(_: Request, exc: RecordsError) -> JSONResponse:
        # records/errors.py: each error carries its status (404, 409, 403, 422, 503).
        if exc.http_status >= 500 and exc.http_status != 503:
            log.error("records error: %s", exc)
        return error_response(exc.http_status, str(exc))

    @app.exception_handler(DBAPIError)
    async def _database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        detail = database_error_detail(exc)
        if detail is None:
            log.exception("unexpected database error", exc_info=exc)
            return error_response(500, "internal error in the service; it has been logged")
        log.warning("records database: %s", detail)
        return error_response(503, detail, {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's form parser raises HTTPException(400) *while handling* its
        # MultiPartException (so it is the context, not the cause): too many files or fields
        # are a size limit (413); a broken multipart body is a 400.
        # FastAPI turns any error raised while it reads the body into a 400 "from" it: the
        # body limits' own errors (413, 408) keep their status.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, MultiPartException):
            status = 413 if "Too many" in cause.message else 400
            return error_response(status, f"the multipart body was refused: {cause.message}")
        if isinstance(cause, ServiceError):
            return error_response(cause.status, cause.detail, cause.headers)
        if isinstance(cause, BodyTooLarge):
            return error_response(413, str(cause.detail), {"Connection": "close"})
        # Keep the exception's headers: `WWW-Authenticate` on 401; `Allow` on 405, with every
        # method of the path (FastAPI makes one route per method, and Starlette names only the
        # first route whose path matched).
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            document = request.app.state.openapi_documents.get(slides_token=True)
            methods = allowed_methods(document, request.url.path)
            if methods:
                headers["Allow"] = ", ".join(methods)
        return error_response(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal error in the service; it has been logged")
