"""The JSON API: one cell, many cells, a whole smear, the model card.

Endpoints are plain `def`: FastAPI runs them in its thread pool, so decoding and inference never
block the event loop; the predictor is safe to call from many threads at once.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, UploadFile

from app.config import Settings
from app.deps import PredictorDep, SettingsDep, require_token
from app.errors import BadImage, ServiceError, TooLarge
from app.imaging import decode_image, read_bounded
from app.schemas import (
    BatchItem,
    BatchOut,
    BatchSummary,
    CellPrediction,
    ItemError,
    ModelRef,
    PredictionOut,
    SmearCellOut,
    SmearOut,
)
from core.predictor import Prediction, Predictor, image_data_url, png_data_url
from core.smear import SmearError, SmearTooLarge, analyze_smear

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "no file in the expected form field, or a malformed request"},
    401: {"description": "RBC_API_TOKEN is set and the bearer token is missing or wrong"},
    413: {"description": "too many bytes, pixels or files"},
    415: {"description": "an image format that is not accepted"},
    422: {"description": "empty, corrupt, truncated or not an image"},
    503: {"description": "the model is not loaded yet"},
}

router = APIRouter(tags=["api"], dependencies=[Depends(require_token)], responses=ERRORS)

HeatmapQuery = Annotated[
    bool, Query(description="add a Grad-CAM heatmap (PNG data URL) for the predicted class")
]


def _model_ref(predictor: Predictor) -> ModelRef:
    card = predictor.card
    return ModelRef(
        name=card.name,
        architecture=card.architecture,
        weights_sha256=card.weights_sha256,
        tta_views=predictor.tta_views,
    )


def _cell(prediction: Prediction) -> dict[str, Any]:
    return {
        "label": prediction.label,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "needs_review": prediction.needs_review,
        "heatmap": prediction.heatmap_data_url(),
    }


def _load(upload: UploadFile, settings: Settings) -> Any:
    name = f"'{upload.filename}'" if upload.filename else "the file"
    data = read_bounded(upload.file, settings.max_upload_bytes, name)
    return decode_image(
        data,
        max_pixels=settings.max_pixels,
        accepted_formats=settings.accepted_formats,
        name=name,
    )


@router.post("/predict", response_model=PredictionOut, response_model_exclude_none=True)
def predict(
    file: Annotated[UploadFile, File(description="one cell image (PNG, JPEG, TIFF, BMP)")],
    predictor: PredictorDep,
    settings: SettingsDep,
    heatmap: HeatmapQuery = False,
) -> PredictionOut:
    """Classify one cell image: the top class, every class's probability, needs-review flag."""
    image = _load(file, settings)
    (prediction,) = predictor.predict([image], heatmap=heatmap)
    return PredictionOut(
        **_cell(prediction),
        review_threshold=predictor.review_threshold,
        model=_model_ref(predictor),
    )


@router.post("/predict/batch", response_model=BatchOut, response_model_exclude_none=True)
def predict_batch(
    files: Annotated[list[UploadFile], File(description="many cell images, one cell each")],
    predictor: PredictorDep,
    settings: SettingsDep,
    heatmap: HeatmapQuery = False,
) -> BatchOut:
    """Classify many cells: one result per file, in order (a bad file gets its own error and
    does not fail the others), and a summary with counts and percentages per class."""
    if len(files) > settings.max_files:
        raise TooLarge(f"{len(files)} files sent; at most {settings.max_files} per request")
    items = [BatchItem(index=i, filename=f.filename) for i, f in enumerate(files)]
    good: list[tuple[int, Any]] = []
    for item, upload in zip(items, files, strict=True):
        try:
            good.append((item.index, _load(upload, settings)))
        except ServiceError as exc:
            item.error = ItemError(status=exc.status, detail=exc.detail)
    predictions = predictor.predict([image for _, image in good], heatmap=heatmap)
    counts = dict.fromkeys(predictor.classes, 0)
    for (index, _), prediction in zip(good, predictions, strict=True):
        items[index].prediction = CellPrediction(**_cell(prediction))
        counts[prediction.label] += 1
    classified = len(predictions)
    summary = BatchSummary(
        total=len(items),
        classified=classified,
        failed=len(items) - classified,
        needs_review=sum(p.needs_review for p in predictions),
        counts=counts,
        percentages={c: (100.0 * n / classified if classified else 0.0) for c, n in counts.items()},
    )
    return BatchOut(
        results=items,
        summary=summary,
        review_threshold=predictor.review_threshold,
        model=_model_ref(predictor),
    )


@router.post("/analyze/smear", response_model=SmearOut, response_model_exclude_none=True)
def analyze_smear_image(
    file: Annotated[UploadFile, File(description="one smear field (PNG, JPEG, TIFF, BMP)")],
    predictor: PredictorDep,
    settings: SettingsDep,
    microns_per_pixel: Annotated[
        float | None,
        Query(gt=0, description="the image's scale; without it, the training scale is assumed"),
    ] = None,
    crops: Annotated[
        bool, Query(description="add each cell's crop (PNG data URL), as the classifier saw it")
    ] = False,
) -> SmearOut:
    """Find every red cell of a smear field, classify each, count, grade, and outline them."""
    image = _load(file, settings)
    try:
        result = analyze_smear(
            image,
            predictor,
            microns_per_pixel,
            keep_crops=crops,
            max_working_pixels=settings.max_pixels,
        )
    except SmearTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    except SmearError as exc:
        raise BadImage(str(exc)) from exc
    cells = [
        SmearCellOut(**{**vars(c), "crop": image_data_url(c.crop) if c.crop else None})
        for c in result.cells
    ]
    return SmearOut(
        **result.summary(),
        cells=cells,
        overlay=png_data_url(result.overlay_png),
        review_threshold=predictor.review_threshold,
        model=_model_ref(predictor),
    )


@router.get("/model")
def model_card(predictor: PredictorDep) -> dict[str, Any]:
    """The model card: classes, architecture, input size, normalisation, metrics, sha256...;
    the card's `tta_views` are those its metrics were measured with, `served_tta_views` those
    this service averages (the card's unless RBC_TTA_VIEWS overrides them)."""
    return {**dataclasses.asdict(predictor.card), "served_tta_views": predictor.tta_views}
