"""The application factory: settings in, a FastAPI app out.

The model is loaded once per process, in the lifespan: the cheap checks (directory, card, state
file, sha256) run before the server accepts requests, so a wrong model directory stops the start
with a clear message; building the network, loading the state dict and the warm-up then run in a
thread, so /healthz answers at once and /readyz turns 200 when the model is ready. Nothing is
unpickled and fastai is never imported: the network is rebuilt by `core.nets`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.errors import BodyTooLarge, error_response, install_error_handlers
from app.routes import api, health, pages
from app.state import ModelSlot
from core.modelcard import ModelFileError, verified_state_path
from core.predictor import ModelLoadError, resolve_device

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length up front or by
    counting the bytes as they stream in (neither Starlette nor FastAPI caps uploads alone)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await error_response(400, "the Content-Length header is not a number")(
                    scope, receive, send
                )
                return
            if int(length) > self.max_bytes:
                await error_response(413, str(BodyTooLarge(self.max_bytes).detail))(
                    scope, receive, send
                )
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await error_response(413, str(exc.detail))(scope, receive, send)


def check_model_dir(settings: Settings) -> None:
    """The fast start-up checks; raises RuntimeError with a message a person can act on."""
    try:
        resolve_device(settings.device)
        verified_state_path(settings.model_dir)
    except (ModelFileError, ModelLoadError) as exc:
        hint = ""
        if not Path(settings.model_dir).exists():
            hint = (
                " Set RBC_MODEL_DIR to an exported model folder (model_state.pt + model_card.json),"
                " e.g. runs/<run>/model from `python -m training`, or models/<name>."
            )
        raise RuntimeError(f"cannot serve the model: {exc}.{hint}") from exc


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    check_model_dir(settings)
    slot = ModelSlot()
    app.state.model_slot = slot  # for tests and benchmarks that wait for readiness
    loader = threading.Thread(target=slot.load, args=(settings,), name="model-loader", daemon=True)
    loader.start()
    yield {"model_slot": slot}
    # A shutdown during the load waits for it: a process that exits while another thread runs
    # torch code can abort ("terminate called without an active exception").
    loader.join()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="RBC morphology",
        summary="Red-blood-cell morphology classification of single-cell images.",
        description=(
            "A support tool, not a diagnosis: the model proposes, a person decides. "
            'Errors are always `{"detail": "..."}`.'
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.templates = Jinja2Templates(directory=ROOT / "templates")
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
