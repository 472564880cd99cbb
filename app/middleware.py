"""ASGI layers that run before any route: they bound what a request may cost before it costs it.

Outermost first (create_app adds them in this order):
- SecurityHeaders: `X-Content-Type-Options: nosniff` and a referrer policy on every answer,
  errors included.
- TokenGate: with RBC_API_TOKEN set, the API paths answer 401 from the headers alone, before a
  byte of the body is read (FastAPI reads the body before it runs any dependency).
- SlidesGate: /slides and /audit requests are attributed to a user of the records
  (app/records_slot.py) from the headers alone: 503 without a database, 401 without a valid
  token, 403 for a viewer's write, all before the body is read (an upload is not read, let
  alone analysed, for nothing).
- BodyLimit: bodies over the byte limit get 413 (by Content-Length up front, or counted as they
  stream in), and a body that has not arrived within the time allowed gets 408.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Collection

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    BodyTimeout,
    BodyTooLarge,
    NotReady,
    ServiceError,
    database_error_detail,
    error_response,
)
from records.errors import RecordsError

log = logging.getLogger(__name__)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
CLOSE = {"Connection": "close"}  # answered before the body was read: stop the client sending it


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenGate:
    """401 on `paths` without the bearer token, decided from the headers alone."""

    def __init__(self, app: ASGIApp, token: str | None, paths: Collection[str]) -> None:
        self.app = app
        self.expected = None if token is None else token.encode()
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        scheme, _, sent = dict(scope.get("headers", [])).get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not sent:
            detail = "this API needs a token: send 'Authorization: Bearer <token>'"
        elif not secrets.compare_digest(sent.strip(), self.expected):
            detail = "the token is not valid"
        else:
            await self.app(scope, receive, send)
            return
        await error_response(401, detail, CLOSE)(scope, receive, send)


SLIDES_PREFIX = "/slides"
AUDIT_PREFIX = "/audit"  # the audit trail of any slide, deleted ones too
RECORDS_PREFIXES = (SLIDES_PREFIX, AUDIT_PREFIX)
SLIDES_REFUSAL = {**CLOSE, "Cache-Control": "no-store"}
READ_METHODS = frozenset({"GET", "HEAD"})
WRITER_ROLES = frozenset({"reviewer", "admin"})


def is_slides_path(path: str) -> bool:
    """A path of the records' API (the slides and the audit trail), which SlidesGate guards."""
    return any(path == p or path.startswith(p + "/") for p in RECORDS_PREFIXES)


class SlidesGate:
    """Attribute every /slides request to a user before its body is read; the user goes into
    the request's state (`slides_user`) for the routes. The records store re-checks the role
    inside each write's transaction: this gate only spares the work of refused requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not is_slides_path(scope["path"])
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        slot = state.get("records")
        headers = dict(scope.get("headers", []))
        try:
            if slot is None:
                raise NotReady("the records database is not open")
            user = await run_in_threadpool(slot.user_for, headers)
        except ServiceError as exc:
            refusal = error_response(
                exc.status, exc.detail, {**(exc.headers or {}), **SLIDES_REFUSAL}
            )
            await refusal(scope, receive, send)
            return
        except RecordsError as exc:
            await error_response(exc.http_status, str(exc), SLIDES_REFUSAL)(scope, receive, send)
            return
        except DBAPIError as exc:
            detail = database_error_detail(exc)
            if detail is None:
                log.exception("unexpected database error", exc_info=exc)
                await error_response(
                    500, "internal error in the service; it has been logged", SLIDES_REFUSAL
                )(scope, receive, send)
                return
            await error_response(503, detail, {"Retry-After": "5", **SLIDES_REFUSAL})(
                scope, receive, send
            )
            return
        if scope["method"] not in READ_METHODS and user.role not in WRITER_ROLES:
            detail = f"user {user.name!r} ({user.role}) may read slides but not change them"
            await error_response(403, detail, SLIDES_REFUSAL)(scope, receive, send)
            return
        state["slides_user"] = user

        async def send_no_store(message: Message) -> None:
            # Laboratory records: no cache on the way may keep a copy.
            if message["type"] == "http.response.start":
                out = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in out):
                    out.append((b"cache-control", b"no-store"))
                message = {**message, "headers": out}
            await send(message)

        await self.app(scope, receive, send_no_store)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 (neither Starlette nor FastAPI caps
    uploads alone), and bodies still incomplete `timeout_s` after the headers with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await error_response(400, "the Content-Length header is not a number", CLOSE)(
                    scope, receive, send
                )
                return
            if int(length) > self.max_bytes:
                await error_response(413, str(BodyTooLarge(self.max_bytes).detail), CLOSE)(
                    scope, receive, send
                )
                return
        received = 0
        body_done = False
        started = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: only the disconnect message is left
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    headers=CLOSE,
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:
                raise
            status = 413 if isinstance(exc, BodyTooLarge) else 408
            await error_response(status, str(exc.detail), CLOSE)(scope, receive, send)
