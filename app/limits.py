"""Limits on work in flight: a gate for heavy requests, and stopping work nobody waits for.

Heavy requests (whole smears, large batches) hold a slot of the gate while they run; at most
`heavy_concurrency` run at once, the others wait up to `heavy_wait_s` for a slot in the event
loop (not in a worker thread, so single cells and /healthz keep their threads), then get 503
with Retry-After. Work runs in the thread pool and calls a check between chunks that stops it
(ClientGone) once the client has closed the connection.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.from_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.errors import Busy, ClientGone

# Called between chunks of work, from a worker thread; raises to stop the work.
StopCheck = Callable[[], None]


class HeavyGate:
    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._semaphore = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def slot(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._semaphore.acquire()
        except TimeoutError:
            raise Busy(
                f"the service is busy with other {what} (at most {self.slots} at a time); "
                f"try again in a few seconds",
                headers={"Retry-After": str(max(1, math.ceil(self.wait_s)))},
            ) from None
        try:
            yield
        finally:
            self._semaphore.release()
            # A field or a large batch frees hundreds of MiB that glibc keeps for reuse; on a
            # 512 MiB instance, hand it back to the system at once.
            await run_in_threadpool(release_freed_memory)


def release_freed_memory() -> None:
    """glibc's malloc_trim(0): return freed heap pages to the system (no-op elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def stop_when_disconnected(request: Request) -> StopCheck:
    """A check for worker threads (run_in_threadpool) that raises ClientGone once the client
    of `request` has disconnected; it asks the event loop without waiting."""

    def check() -> None:
        if anyio.from_thread.run(request.is_disconnected):
            raise ClientGone("the client closed the connection; the work was stopped")

    return check
