"""Limits on work in flight: a gate for heavy requests, and stopping work nobody waits for.

Heavy requests (whole smears, large batches) hold a slot of the gate while they run; at most
`heavy_concurrency` run at once, the others wait up to `heavy_wait_s` for a slot in the event
loop (not in a worker thread, so single cells and /healthz keep their threads), then get 503
with Retry-After. Work runs in the thread pool and calls a check between chunks that stops it
(ClientGone) once the client has closed the connection. When a heavy request ends, the memory
it freed is handed back to the system (`release_freed_memory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.requests import Request

from app.errors import Busy, ClientGone

# Called between chunks of work, from a worker thread; raises to stop the work.
StopCheck = Callable[[], None]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).
    A field's image, crops and activations are freed after its request, but the allocator keeps
    the pages: with both models and 100 fields the service's peak was 304 MiB without this and
    286 MiB with it, after every heavy request (bench/bench_service_memory.py)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


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
            release_freed_memory()


@asynccontextmanager
async def stop_when_disconnected(request: Request) -> AsyncIterator[StopCheck]:
    """A check for the worker thread that does this request's work: it raises ClientGone once
    the client has disconnected. A task in the event loop waits for the disconnect message while
    the work runs (the body has been read, so nothing else is waiting for messages), and the
    check only reads a flag: asking the loop from the worker at every chunk cost ~10 % of a
    batch's time on 2 cores (torch's spinning threads delay the loop)."""
    gone = threading.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    def check() -> None:
        if gone.is_set():
            raise ClientGone("the client closed the connection; the work was stopped")

    watcher = asyncio.create_task(watch())
    try:
        yield check
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
