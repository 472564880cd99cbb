"""The application factory: settings in, a FastAPI app out.

The model is loaded once per process, in the lifespan: the cheap checks (directory, card, state
file, sha256) run before the server accepts requests, so a wrong model directory stops the start
with a clear message; building the network, loading the state dict and the warm-up then run in a
thread, so /healthz answers at once and /readyz turns 200 when the model is ready. Nothing is
unpickled and fastai is never imported: the network is rebuilt by `core.classify.nets`.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.config import Settings, get_settings
from app.deps import require_token
from app.errors import install_error_handlers
from app.limits import HeavyGate
from app.middleware import BodyLimit, IdentityGate, SecurityHeaders
from app.openapi import OpenApiDocuments
from app.records_slot import RecordsSlot
from app.routes import api, docs, health, models, pages, slides
from app.state import ModelSlot, check_training_scale, detector_enabled
from app.teaching import Teacher
from app.versions import Switcher
from core.classify.predictor import ModelLoadError, resolve_device
from core.detect.learned import verified_detector_onnx, verified_detector_path
from core.modelcard import ModelFileError, verified_onnx_path, verified_state_path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def check_model_dir(settings: Settings) -> None:
    """The fast start-up checks; raises RuntimeError with a message a person can act on."""
    try:
        resolve_device(settings.device)
        _, card = verified_state_path(settings.model_dir)
        verified_onnx_path(settings.model_dir)
        check_training_scale(card)
        if detector_enabled(settings):
            verified_detector_path(settings.detector_dir)
            verified_detector_onnx(settings.detector_dir)
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
    # The records database: opened and brought to the newest schema before requests are
    # served. A database that fails leaves /slides answering 503 (the single-cell API works);
    # no users on a non-loopback address stops the start (StartRefused).
    records = RecordsSlot(settings)
    app.state.records = records
    await run_in_threadpool(records.start)
    slot = ModelSlot()
    app.state.model_slot = slot  # for tests and benchmarks that wait for readiness
    # Model versions (app/versions.py): the start serves the newest activation's version when
    # it still verifies, and a thread follows the activations other instances make.
    switcher = Switcher(settings, slot, records)
    app.state.switcher = switcher
    slot.start_choice = switcher.start_choice
    loader = threading.Thread(target=slot.load, args=(settings,), name="model-loader", daemon=True)
    loader.start()
    stop = threading.Event()
    follower = threading.Thread(
        target=switcher.run, args=(stop,), name="model-follower", daemon=True
    )
    follower.start()
    # Teach jobs (app/teaching.py): a runner thread when this instance can teach.
    teacher = Teacher(settings, records, switcher.versions)
    teach_runner = teacher.start(stop)
    try:
        yield {"model_slot": slot, "records": records, "switcher": switcher, "teacher": teacher}
    finally:
        # A shutdown during the load waits for it: a process that exits while another thread
        # runs torch code can abort ("terminate called without an active exception").
        stop.set()
        loader.join()
        follower.join()
        if teach_runner is not None:
            teach_runner.join()  # a running adapt is stopped and its job put back
        records.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    quiet_image_warnings()
    app = FastAPI(
        title="RBC morphology",
        summary="Red-blood-cell morphology classification of single cells, smear fields and "
        "whole slides.",
        description=(
            "A support tool, not a diagnosis: the model proposes, a person decides. "
            'Errors are always `{"detail": "..."}`.'
        ),
        version="0.1.0",
        lifespan=lifespan,
        # The interactive docs are served from this service's own files (no CDN); ReDoc has
        # no offline bundle here, so it is off.
        docs_url=None,
        redoc_url=None,
        # /openapi.json is app/routes/docs.py's: the document depends on the slides' mode.
        openapi_url=None,
    )
    app.state.settings = settings
    documents = OpenApiDocuments(
        app, settings.max_files, {"SmearCellsIn.cells": settings.max_smear_cells}
    )
    app.state.openapi_documents = documents
    app.openapi = lambda: documents.get(slides_token=True)  # type: ignore[method-assign]
    app.state.templates = Jinja2Templates(directory=ROOT / "templates")
    app.state.heavy_gate = HeavyGate(settings.heavy_concurrency, settings.heavy_wait_s)
    install_error_handlers(app)
    app.include_router(health.router)
    # The token dependency marks the API as secured in the OpenAPI schema; IdentityGate below
    # enforces it before the body is read. Without a token, the schema asks for none.
    token_deps = [Depends(require_token)] if settings.api_token is not None else []
    app.include_router(api.router, dependencies=token_deps)
    # The slides API answers to the records' users (app/identity.py), never RBC_API_TOKEN.
    app.include_router(slides.router)
    app.include_router(slides.audit_router)
    app.include_router(models.router)
    app.include_router(pages.router)
    app.include_router(docs.router)
    docs.mount_assets(app)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization"],
        )
    # Added last = runs first: the headers on every answer, then who is asking (the token on
    # the analysis API, a user on the slides), then the body.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.body_timeout_s
    )
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    api_paths = {route.path for route in api.router.routes if isinstance(route, APIRoute)}
    app.add_middleware(IdentityGate, api_token=token, analysis_paths=api_paths)
    app.add_middleware(SecurityHeaders)
    return app


def quiet_image_warnings() -> None:
    """Pillow warns once per bogus EXIF tag (a JPEG with 5,000 of them wrote 5,000 lines to
    the log); the image is still decoded or refused on its own merits."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
