"""Serving with uvicorn, with the limits uvicorn lacks: a header timeout and a connection cap.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`), but a client that sends half
its headers and stalls, or trickles them a byte a second, is kept forever, and ~20,000 of them
exhaust the process's file descriptors (then even /healthz fails). The protocol here:
- closes a connection whose request headers have not all arrived `header_timeout_s` after it
  opened or after its previous answer;
- beyond `max_connections` open connections, closes the connection that has waited longest
  without a request in progress (stalled or idle), so that new clients still get in; a request
  being worked on is never cut.
The body has its own deadline (app.middleware.BodyLimit: 408). See docs/service.md for the
matching settings of a proxy in front.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from app.config import Settings

log = logging.getLogger(__name__)


class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools or h11) with a header deadline and a connection cap.
    `guarded_protocol` makes a subclass with the settings and its own registry."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    # Connections without a request in progress, oldest wait first (a dict keeps order).
    waiting: ClassVar[dict[GuardedHTTPProtocol, None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_waiting()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.waiting.pop(self, None)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_waiting()

    def _request_in_progress(self) -> bool:
        cycle: Any = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _start_waiting(self) -> None:
        self.waiting.pop(self, None)
        self.waiting[self] = None  # to the end: the newest wait
        self._stop_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self._request_in_progress() and not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """Close the connection that has waited longest for a request (not this new one)."""
        for other in list(self.waiting):
            if other is self:
                continue
            del self.waiting[other]
            if other._request_in_progress() or other.transport.is_closing():
                continue  # it is re-listed when its answer is sent
            other.transport.close()
            return
        log.warning("more than %d connections, all busy: refusing one", self.max_connections)
        self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHTTPProtocol]:
    return type(
        "ServiceHTTPProtocol",
        (GuardedHTTPProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": settings.max_connections,
            "waiting": {},
        },
    )


def serve(settings: Settings) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Behind Render's or another proxy, trust its X-Forwarded-* headers only from loopback.
        proxy_headers=True,
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,
    )
