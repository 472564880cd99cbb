"""The JSON API: one cell, many cells, a whole smear, the model card.

Decoding and inference never run on the event loop: plain `def` endpoints run in FastAPI's thread
pool, and the heavy ones (`async`) first wait for a slot of the heavy-work gate in the loop, then
hand their work to the thread pool (app/limits.py). The predictor is safe to call from many
threads at once.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.analysis import analyze_field, read_field
from app.config import Settings
from app.deps import DetectorDep, PredictorDep, SettingsDep
from app.errors import ServiceError, TooLarge, smear_errors
from app.limits import HeavyGate, StopCheck, stop_when_disconnected
from app.schemas import (
    BatchItem,
    BatchOut,
    BatchSummary,
    CellPrediction,
    ErrorOut,
    ItemError,
    ModelRef,
    OtherCellOut,
    PredictionOut,
    SmearCellOut,
    SmearOut,
)
from core.classify.predictor import Prediction, Predictor, image_data_url, png_data_url
from core.detect.learned import CellDetector
from core.imageio import ImageError, SizeCheck, decode_image, read_bounded
from core.smear.analysis import MAX_MICRONS_PER_PIXEL, MIN_MICRONS_PER_PIXEL, OtherCell
from core.smear.counting import count_labels, percentages

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "no file in the expected form field, or malformed"},
    401: {
        "model": ErrorOut,
        "description": "RBC_API_TOKEN is set and the bearer token is missing or wrong",
    },
    408: {"model": ErrorOut, "description": "the body did not arrive in time"},
    413: {"model": ErrorOut, "description": "too many bytes, pixels, cells, files or parts"},
    415: {"model": ErrorOut, "description": "an image format that is not accepted"},
    422: {
        "model": ErrorOut,
        "description": "empty, corrupt, truncated, multi-page, not an image, or of an "
        "aspect ratio no cell image has",
    },
    503: {
        "model": ErrorOut,
        "description": "the model is not loaded yet, or (with Retry-After) every slot for "
        "heavy work stayed busy",
    },
}

# The API's routes; create_app adds the token check (only when RBC_API_TOKEN is set).
router = APIRouter(tags=["api"], responses=ERRORS)

HeatmapQuery = Annotated[
    bool, Query(description="add a Grad-CAM heatmap (PNG data URL) for the predicted class")
]
GATE_WHAT = {"smear": "whole fields", "batch": "large batches"}


def get_gate(request: Request) -> HeavyGate:
    gate: HeavyGate = request.app.state.heavy_gate
    return gate


GateDep = Annotated[HeavyGate, Depends(get_gate)]


def model_ref(predictor: Predictor) -> ModelRef:
    """The classifier that answered: `weights_sha256` is the sha256 of the file the service
    loaded (the card's `state_file`, model_state.pt, verified against the card before it was
    read), never that of export.pkl, which the service does not read."""
    card = predictor.card
    assert card.state_file and card.state_sha256, "the predictor loads verified state files only"
    return ModelRef(
        name=card.name,
        architecture=card.architecture,
        weights_file=card.state_file,
        weights_sha256=card.state_sha256,
        tta_views=predictor.tta_views,
    )


def detector_sha256(detector: CellDetector | None) -> str | None:
    """The sha256 of the detector weights the service loaded (None: classical segmentation)."""
    return detector.card.state_sha256 if detector is not None else None


def _cell(prediction: Prediction) -> dict[str, Any]:
    return {
        "label": prediction.label,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "needs_review": prediction.needs_review,
        "heatmap": prediction.heatmap_data_url(),
    }


def _load(
    upload: UploadFile,
    settings: Settings,
    *,
    max_side: int | None = None,
    check_size: SizeCheck | None = None,
) -> Image.Image:
    name = f"'{upload.filename}'" if upload.filename else "the file"
    data = read_bounded(upload.file, settings.max_upload_bytes, name)
    return decode_image(
        data,
        max_pixels=settings.max_pixels,
        accepted_formats=settings.accepted_formats,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_side=max_side,
        check_size=check_size,
        name=name,
    )


def _load_cell(upload: UploadFile, settings: Settings, predictor: Predictor) -> Image.Image:
    """One cell image, at once brought to the network's input size: a request keeps
    input-size images only, whatever was uploaded (32 images of 4096x4096 would otherwise hold
    1.6 GB until the forward pass). Decoding already shrinks it to within 2x of 4x that size."""
    size = predictor.preprocess.size
    return predictor.preprocess.resized(_load(upload, settings, max_side=4 * size))


@router.post("/predict", response_model=PredictionOut, response_model_exclude_none=True)
def predict(
    file: Annotated[UploadFile, File(description="one cell image (PNG, JPEG, TIFF, BMP)")],
    predictor: PredictorDep,
    settings: SettingsDep,
    heatmap: HeatmapQuery = False,
) -> PredictionOut:
    """Classify one cell image: the top class, every class's probability, needs-review flag."""
    image = _load_cell(file, settings, predictor)
    (prediction,) = predictor.predict([image], heatmap=heatmap)
    return PredictionOut(
        **_cell(prediction),
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
    )


@router.post("/predict/batch", response_model=BatchOut, response_model_exclude_none=True)
async def predict_batch(
    request: Request,
    files: Annotated[list[UploadFile], File(description="many cell images, one cell each")],
    predictor: PredictorDep,
    settings: SettingsDep,
    gate: GateDep,
    heatmap: HeatmapQuery = False,
) -> BatchOut:
    """Classify many cells: one result per file, in order (a bad file gets its own error and
    does not fail the others), and a summary with counts and percentages per class. Batches of
    more than RBC_HEAVY_BATCH_FILES images share the slots for heavy work (503 when busy)."""
    if len(files) > settings.max_files:
        raise TooLarge(f"{len(files)} files sent; at most {settings.max_files} per request")
    if len(files) <= settings.heavy_batch_files:
        async with stop_when_disconnected(request) as check:
            return await run_in_threadpool(_batch, files, predictor, settings, heatmap, check)
    async with gate.slot(GATE_WHAT["batch"]), stop_when_disconnected(request) as check:
        return await run_in_threadpool(_batch, files, predictor, settings, heatmap, check)


def _batch(
    files: list[UploadFile],
    predictor: Predictor,
    settings: Settings,
    heatmap: bool,
    check: StopCheck,
) -> BatchOut:
    items = [BatchItem(index=i, filename=f.filename) for i, f in enumerate(files)]
    good: list[tuple[int, Image.Image]] = []
    for item, upload in zip(items, files, strict=True):
        if item.index % 8 == 7:
            check()
        try:
            good.append((item.index, _load_cell(upload, settings, predictor)))
        except (ImageError, ServiceError) as exc:
            item.error = ItemError(status=exc.status, detail=exc.detail)
    predictions = predictor.predict([image for _, image in good], heatmap=heatmap, check=check)
    for (index, _), prediction in zip(good, predictions, strict=True):
        items[index].prediction = CellPrediction(**_cell(prediction))
    counts = count_labels((p.label for p in predictions), predictor.classes)
    classified = len(predictions)
    summary = BatchSummary(
        total=len(items),
        classified=classified,
        failed=len(items) - classified,
        needs_review=sum(p.needs_review for p in predictions),
        counts=counts,
        percentages=percentages(counts),
    )
    return BatchOut(
        results=items,
        summary=summary,
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
    )


@router.post("/analyze/smear", response_model=SmearOut, response_model_exclude_none=True)
async def analyze_smear_image(
    request: Request,
    file: Annotated[UploadFile, File(description="one smear field (PNG, JPEG, TIFF, BMP)")],
    predictor: PredictorDep,
    detector: DetectorDep,
    settings: SettingsDep,
    gate: GateDep,
    microns_per_pixel: Annotated[
        float | None,
        Query(
            ge=MIN_MICRONS_PER_PIXEL,
            le=MAX_MICRONS_PER_PIXEL,
            description="the image's scale; without it, the scale is estimated from the "
            "field's own red cells (learned detector) or the training scale is assumed",
        ),
    ] = None,
    crops: Annotated[
        bool, Query(description="add each cell's crop (PNG data URL), as the classifier saw it")
    ] = False,
) -> SmearOut:
    """Find every red cell of a smear field, classify each, count, grade, and outline them.
    A field may hold at most RBC_MAX_SMEAR_PIXELS pixels once brought to the training scale
    and RBC_MAX_SMEAR_CELLS red cells (413 says how to split a larger one); fields share the
    slots for heavy work (503 with Retry-After when they stay busy)."""
    async with gate.slot(GATE_WHAT["smear"]), stop_when_disconnected(request) as check:
        return await run_in_threadpool(
            _smear, file, predictor, detector, settings, microns_per_pixel, crops, check
        )


def _smear(
    file: UploadFile,
    predictor: Predictor,
    detector: CellDetector | None,
    settings: Settings,
    microns_per_pixel: float | None,
    crops: bool,
    check: StopCheck,
) -> SmearOut:
    name = f"'{file.filename}'" if file.filename else "the file"
    with smear_errors():
        image = read_field(file.file, name, settings, microns_per_pixel)
        result = analyze_field(
            image, predictor, detector, settings, microns_per_pixel, keep_crops=crops, check=check
        )
    del image
    cells = [
        SmearCellOut(**{**vars(c), "crop": image_data_url(c.crop) if c.crop else None})
        for c in result.cells
    ]
    return SmearOut(
        **result.summary(),
        white_cells=[_other(o) for o in result.white_cells],
        platelets=[_other(o) for o in result.platelets],
        cells=cells,
        overlay=png_data_url(result.overlay_png),
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
        detector_weights_sha256=detector_sha256(detector),
    )


def _other(cell: OtherCell) -> OtherCellOut:
    return OtherCellOut(**{**vars(cell), "crop": image_data_url(cell.crop) if cell.crop else None})


@router.get("/model")
def model_card(predictor: PredictorDep, detector: DetectorDep) -> dict[str, Any]:
    """The model card: classes, architecture, input size, normalisation, metrics, sha256...;
    the card's `tta_views` are those its metrics were measured with, `served_tta_views` those
    this service averages (the card's unless RBC_TTA_VIEWS overrides them). `detector` is the
    cell detector's card (sources, scale, thresholds, metrics per source, sha256), or null when
    whole fields use the classical segmentation."""
    return {
        **dataclasses.asdict(predictor.card),
        "served_tta_views": predictor.tta_views,
        "detector": dataclasses.asdict(detector.card) if detector is not None else None,
    }
