"""ASGI layers that run before any route: they bound what a request may cost before it costs it.

Outermost first (create_app adds them in this order):
- SecurityHeaders: `X-Content-Type-Options: nosniff` and a referrer policy on every answer,
  errors included.
- IdentityGate: every protected path learns who is asking (app/identity.py) from the headers
  alone, before a byte of the body is read (FastAPI reads the body before it runs any
  dependency, so a route's check would come too late): on the analysis API, 401 without
  RBC_API_TOKEN when it is set; on /slides, /audit and /models, a records user
  (app/records_slot.py): 503 without a database, 401 without a valid token, 403 for a
  viewer's write. An upload is not read, let alone analysed, for nothing.
- BodyLimit: bodies over the byte limit get 413 (by Content-Length up front, or counted as they
  stream in), and a body that has not arrived within the time allowed gets 408.
"""

from __future__ import annotations

import asyncio
import logging
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
from app.identity import Identities, Identity, Realm, needed, refusal
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


SLIDES_PREFIX = "/slides"
AUDIT_PREFIX = "/audit"  # the audit trail of any slide, deleted ones too
MODELS_PREFIX = "/models"  # the model versions: switches are recorded in the records database
RECORDS_PREFIXES = (SLIDES_PREFIX, AUDIT_PREFIX, MODELS_PREFIX)
SLIDES_REFUSAL = {**CLOSE, "Cache-Control": "no-store"}


def is_slides_path(path: str) -> bool:
    """A path of the records' API (the slides, the audit trail, the model versions)."""
    return any(path == p or path.startswith(p + "/") for p in RECORDS_PREFIXES)


class IdentityGate:
    """Decide who is asking (app/identity.py) on every protected path, from the headers alone,
    and put the identity into the request's state (`identity`); routes only read it. The
    records store re-checks a user's role inside each write's transaction: this gate spares the
    work of refused requests."""

    def __init__(
        self, app: ASGIApp, api_token: str | None, analysis_paths: Collection[str]
    ) -> None:
        self.app = app
        self.identities = Identities(api_token)
        self.analysis_paths = frozenset(analysis_paths)

    def realm(self, scope: Scope) -> Realm | None:
        # A CORS preflight carries no credentials, by the standard: refusing it would keep every
        # browser page of an allowed origin from calling the API with its token.
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return None
        if scope["path"] in self.analysis_paths:
            return Realm.ANALYSIS
        if is_slides_path(scope["path"]):
            return Realm.RECORDS
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        realm = self.realm(scope)
        if realm is None:
            await self.app(scope, receive, send)
            return
        refused = CLOSE if realm is Realm.ANALYSIS else SLIDES_REFUSAL
        try:
            identity = await self.identify(realm, scope)
        except ServiceError as exc:
            await error_response(exc.status, exc.detail, {**(exc.headers or {}), **refused})(
                scope, receive, send
            )
            return
        except RecordsError as exc:
            await error_response(exc.http_status, str(exc), refused)(scope, receive, send)
            return
        except DBAPIError as exc:
            detail = database_error_detail(exc)
            if detail is None:
                log.exception("unexpected database error", exc_info=exc)
                await error_response(
                    500, "internal error in the service; it has been logged", refused
                )(scope, receive, send)
                return
            await error_response(503, detail, {"Retry-After": "5", **refused})(scope, receive, send)
            return
        permission = needed(realm, scope["method"])
        if not identity.may(permission):
            await error_response(403, refusal(identity, permission), refused)(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = identity
        if realm is Realm.ANALYSIS:
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            # Laboratory records: no cache on the way may keep a copy.
            if message["type"] == "http.response.start":
                out = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in out):
                    out.append((b"cache-control", b"no-store"))
                message = {**message, "headers": out}
            await send(message)

        await self.app(scope, receive, send_no_store)

    async def identify(self, realm: Realm, scope: Scope) -> Identity:
        headers = dict(scope.get("headers", []))
        if realm is Realm.ANALYSIS:
            return self.identities.analyst(headers)  # no I/O: a comparison
        slot = scope.get("state", {}).get("records")
        if slot is None:
            raise NotReady("the records database is not open")
        return await run_in_threadpool(self.identities.records_user, slot, headers)


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
