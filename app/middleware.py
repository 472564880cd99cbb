"""ASGI layers that run before any route: they bound what a request may cost before it costs it.

Outermost first (create_app adds them in this order):
- SecurityHeaders: `X-Content-Type-Options: nosniff` and a referrer policy on every answer,
  errors included.
- TokenGate: with RBC_API_TOKEN set, the API paths answer 401 from the headers alone, before a
  byte of the body is read (FastAPI reads the body before it runs any dependency).
- BodyLimit: bodies over the byte limit get 413 (by Content-Length up front, or counted as they
  stream in), and a body that has not arrived within the time allowed gets 408.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BodyTimeout, BodyTooLarge, error_response

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
