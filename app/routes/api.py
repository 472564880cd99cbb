"""The JSON API: one cell, many cells, a whole smear, the model card.

Decoding and inference never run on the event loop: plain `def` endpoints run in FastAPI's thread
pool, and the heavy ones (`async`) first wait for a slot of the heavy-work gate in the loop, then
hand their work to the thread pool (app/limits.py). The predictor is safe to call from many
threads at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.analysis import analyze_field, read_field
from app.config import Settings
from app.deps import DetectorDep, PredictorDep, SettingsDep
from app.errors import ServiceError, TooLarge, UnknownClass, smear_errors
from app.limits import HeavyGate, StopCheck, stop_when_disconnected
from app.schemas import (
    BatchItem,
    BatchItemIn,
    BatchOut,
    BatchResultsIn,
    BatchSummary,
    CellPrediction,
    CellScale,
    ErrorOut,
    Framing,
    ItemError,
    ModelRef,
    OtherCellOut,
    PredictionOut,
    SmearCellIn,
    SmearCellOut,
    SmearCellsIn,
    SmearCountsOut,
    SmearGrading,
    SmearOut,
)
from app.sheets import batch_columns, batch_rows, csv_text, smear_columns, smear_rows
from core.classify.predictor import Prediction, Predictor, image_data_url, png_data_url
from core.detect.learned import CellDetector
from core.imageio import ImageError, SizeCheck, decode_image, read_bounded
from core.smear.analysis import (
    MAX_MICRONS_PER_PIXEL,
    MIN_MICRONS_PER_PIXEL,
    TRAINING_MICRONS_PER_PIXEL,
)
from core.smear.counting import count_labels, grades, percentages
from core.smear.crop import DEFAULT_WINDOW
from core.smear.framing import (
    FramedCell,
    batch_notes,
    frame_cell,
    needs_review,
    unknown_scale_note,
)
from core.smear.grading import GRADING_SOURCE, scales_for
from core.smear.result import FieldObject

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

# What GET /model can answer besides 200 (it reads no body and no image).
CARD_ERRORS: dict[int | str, dict[str, Any]] = {status: ERRORS[status] for status in (401, 503)}

# What the operations that take results back (JSON, no image) can answer besides 200.
RESULTS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not JSON of the documented shape"},
    401: ERRORS[401],
    422: {"model": ErrorOut, "description": "a label that is not a class of the served model"},
    503: {"model": ErrorOut, "description": "the model is not loaded yet (its classes are needed)"},
}
SMEAR_RESULTS_ERRORS: dict[int | str, dict[str, Any]] = {
    **RESULTS_ERRORS,
    413: {
        "model": ErrorOut,
        "description": "more cells than a field may hold (RBC_MAX_SMEAR_CELLS)",
    },
}
CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "the rows, as an attachment"}
}

# The API's routes; create_app adds the token check (only when RBC_API_TOKEN is set).
router = APIRouter(tags=["api"])

HeatmapQuery = Annotated[
    bool,
    Query(
        description="add a LayerCAM heatmap (PNG data URL) for the predicted class, where the "
        "service can draw one (it needs torch; GET /model: served_heatmaps)"
    ),
]
GATE_WHAT = {"smear": "whole fields", "batch": "large batches"}
# Single cells: the scale as a form field (what the page sends) or, as /analyze/smear takes it,
# a query parameter; the same range and the same 400s as the smear's.
CELL_SCALE_HELP = (
    "the image's scale, um per pixel: each image is brought to the training scale "
    f"({TRAINING_MICRONS_PER_PIXEL}) and cut around the red cell nearest its centre, as the "
    "training crops were; without it the image is classified as given, taken to be a "
    "training-size crop at the training scale, and size classes (macrocyte, microcyte) are "
    "marked for review"
)
ScaleForm = Annotated[
    float | None,
    Form(ge=MIN_MICRONS_PER_PIXEL, le=MAX_MICRONS_PER_PIXEL, description=CELL_SCALE_HELP),
]
ScaleQuery = Annotated[
    float | None,
    Query(
        alias="microns_per_pixel",
        ge=MIN_MICRONS_PER_PIXEL,
        le=MAX_MICRONS_PER_PIXEL,
        description="the same as the form field microns_per_pixel (send one of the two)",
    ),
]


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
        calibrated=predictor.calibration is not None,
    )


def detector_sha256(detector: CellDetector | None) -> str | None:
    """The sha256 of the detector weights the service loaded (None: classical segmentation)."""
    return detector.card.state_sha256 if detector is not None else None


def _cell(prediction: Prediction, framed: FramedCell | None) -> dict[str, Any]:
    """A prediction's fields; size classes need review where size cannot be judged (no scale,
    or a cell cut by the image edge)."""
    size_judged = framed is not None and framed.size_judged
    return {
        "label": prediction.label,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "needs_review": needs_review(prediction.label, prediction.needs_review, size_judged),
        "heatmap": prediction.heatmap_data_url(),
        "familiarity": prediction.familiarity,
        "unfamiliar": prediction.unfamiliar,
    }


def _cell_scale(form: float | None, query: float | None) -> float | None:
    """The one scale of a single-cell request, sent as a form field or a query parameter."""
    if form is not None and query is not None and form != query:
        raise ServiceError(
            f"microns_per_pixel was sent twice with different values ({form} as a form field, "
            f"{query} in the query): send it once"
        )
    return form if form is not None else query


def _scale_out(microns_per_pixel: float | None) -> CellScale:
    return CellScale(
        microns_per_pixel=microns_per_pixel,
        known=microns_per_pixel is not None,
        training_microns_per_pixel=TRAINING_MICRONS_PER_PIXEL,
    )


def _framing_out(framed: FramedCell | None) -> Framing | None:
    if framed is None:
        return None
    return Framing(
        cell_found=framed.cell_found,
        at_border=framed.at_border,
        x=framed.x,
        y=framed.y,
        factor=framed.factor,
    )


def crop_window(predictor: Predictor) -> int:
    """The side of the model's training crops at the training scale (the card's, as the smear
    pipeline cuts them)."""
    return predictor.card.crop_window_px or DEFAULT_WINDOW


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


def _load_cell(
    upload: UploadFile,
    settings: Settings,
    predictor: Predictor,
    microns_per_pixel: float | None,
) -> tuple[Image.Image, FramedCell | None]:
    """One cell image, at once brought to what the classifier takes, so that a request keeps
    small images only, whatever was uploaded (32 images of 4096x4096 would otherwise hold
    1.6 GB until the forward pass). Without a scale: the image as given, at the network's input
    size (decoding already shrinks it to within 2x of 4x that size). With one: the crop of the
    model's window at the training scale around its cell (decoded at full size, since shrinking
    would change its scale; framing resamples only a bounded region around the centre)."""
    if microns_per_pixel is None:
        size = predictor.preprocess.size
        return predictor.preprocess.resized(_load(upload, settings, max_side=4 * size)), None
    image = _load(upload, settings)
    framed = frame_cell(image, microns_per_pixel, window=crop_window(predictor))
    return framed.crop, framed


@router.post(
    "/predict", response_model=PredictionOut, response_model_exclude_none=True, responses=ERRORS
)
def predict(
    file: Annotated[UploadFile, File(description="one cell image (PNG, JPEG, TIFF, BMP)")],
    predictor: PredictorDep,
    settings: SettingsDep,
    microns_per_pixel: ScaleForm = None,
    scale_query: ScaleQuery = None,
    heatmap: HeatmapQuery = False,
) -> PredictionOut:
    """Classify one cell image: the top class, every class's probability, needs-review flag.
    With `microns_per_pixel` the image is first brought to the training scale and framing
    (`framing` says where the crop was cut); without it, `notes` says what the answer rests on."""
    scale = _cell_scale(microns_per_pixel, scale_query)
    image, framed = _load_cell(file, settings, predictor, scale)
    (prediction,) = predictor.predict([image], heatmap=heatmap)
    return PredictionOut(
        **_cell(prediction, framed),
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
        scale=_scale_out(scale),
        framing=_framing_out(framed),
        notes=[unknown_scale_note(crop_window(predictor))] if framed is None else framed.notes(),
    )


@router.post(
    "/predict/batch", response_model=BatchOut, response_model_exclude_none=True, responses=ERRORS
)
async def predict_batch(
    request: Request,
    files: Annotated[list[UploadFile], File(description="many cell images, one cell each")],
    predictor: PredictorDep,
    settings: SettingsDep,
    gate: GateDep,
    microns_per_pixel: ScaleForm = None,
    scale_query: ScaleQuery = None,
    heatmap: HeatmapQuery = False,
) -> BatchOut:
    """Classify many cells: one result per file, in order (a bad file gets its own error and
    does not fail the others), and a summary with counts and percentages per class. Batches of
    more than RBC_HEAVY_BATCH_FILES images share the slots for heavy work (503 when busy).
    `microns_per_pixel`, when given, is every image's scale (see POST /predict)."""
    if len(files) > settings.max_files:
        raise TooLarge(f"{len(files)} files sent; at most {settings.max_files} per request")
    scale = _cell_scale(microns_per_pixel, scale_query)
    work = (files, predictor, settings, scale, heatmap)
    if len(files) <= settings.heavy_batch_files:
        async with stop_when_disconnected(request) as check:
            return await run_in_threadpool(_batch, *work, check)
    async with gate.slot(GATE_WHAT["batch"]), stop_when_disconnected(request) as check:
        return await run_in_threadpool(_batch, *work, check)


def _batch(
    files: list[UploadFile],
    predictor: Predictor,
    settings: Settings,
    microns_per_pixel: float | None,
    heatmap: bool,
    check: StopCheck,
) -> BatchOut:
    items = [BatchItem(index=i, filename=f.filename) for i, f in enumerate(files)]
    good: list[tuple[int, Image.Image, FramedCell | None]] = []
    for item, upload in zip(items, files, strict=True):
        if item.index % 8 == 7:
            check()
        try:
            image, framed = _load_cell(upload, settings, predictor, microns_per_pixel)
        except (ImageError, ServiceError) as exc:
            item.error = ItemError(status=exc.status, detail=exc.detail)
            continue
        good.append((item.index, image, framed))
        item.framing = _framing_out(framed)
    predictions = predictor.predict([g[1] for g in good], heatmap=heatmap, check=check)
    for (index, _, framed), prediction in zip(good, predictions, strict=True):
        items[index].prediction = CellPrediction(**_cell(prediction, framed))
    summary = batch_summary(
        len(items),
        [(i.prediction.label, i.prediction.needs_review) for i in items if i.prediction],
        predictor.classes,
    )
    notes = (
        [unknown_scale_note(crop_window(predictor))]
        if microns_per_pixel is None
        else batch_notes([g[2] for g in good])
    )
    return BatchOut(
        results=items,
        summary=summary,
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
        scale=_scale_out(microns_per_pixel),
        notes=notes,
    )


def batch_summary(
    total: int, predicted: Sequence[tuple[str, bool]], classes: Sequence[str]
) -> BatchSummary:
    """A batch's counts from its classified cells' (label, needs_review): the one place, for
    POST /predict/batch and POST /predict/batch/summary."""
    counts = count_labels((label for label, _ in predicted), classes)
    return BatchSummary(
        total=total,
        classified=len(predicted),
        failed=total - len(predicted),
        needs_review=sum(flag for _, flag in predicted),
        counts=counts,
        percentages=percentages(counts),
    )


@router.post(
    "/analyze/smear", response_model=SmearOut, response_model_exclude_none=True, responses=ERRORS
)
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
        analysed = analyze_field(
            image, predictor, detector, settings, microns_per_pixel, keep_crops=crops, check=check
        )
    del image
    field = analysed.result
    views = analysed.object_crops
    return SmearOut(
        **field.model_dump(exclude={"cells", "white_cells", "platelets"}),
        cells=[
            SmearCellOut(**c.model_dump(), crop=_data_url(analysed.crops.get(c.id)))
            for c in field.cells
        ],
        white_cells=[_other(o, views) for o in field.white_cells],
        platelets=[_other(o, views) for o in field.platelets],
        overlay=png_data_url(analysed.overlay_png),
        review_threshold=predictor.review_threshold,
        model=model_ref(predictor),
        detector_weights_sha256=detector_sha256(detector),
    )


def _data_url(image: Image.Image | None) -> str | None:
    return image_data_url(image) if image is not None else None


def _other(obj: FieldObject, views: dict[int, Image.Image]) -> OtherCellOut:
    return OtherCellOut(**obj.model_dump(), crop=_data_url(views.get(obj.id)))


# --- results sent back: the page keeps what a person changed (a cell reclassified) and the
# server counts, grades and writes the CSV, so the rules stay in core and the columns in
# app/sheets.py. Stateless: nothing is kept; slides are where results are kept (/slides).


def _check_classes(labels: Iterable[str], classes: Sequence[str]) -> None:
    known = set(classes)
    for label in labels:
        if label not in known:
            raise UnknownClass(
                f"'{label}' is not a class of the served model ({', '.join(classes)}); "
                "analyse the image again with this model"
            )


def _smear_cells(
    body: SmearCellsIn, classes: Sequence[str], settings: Settings
) -> list[SmearCellIn]:
    """A field's cells, checked: no more than an analysed field may hold (its maxItems in the
    OpenAPI document), every class one of the served model's."""
    if len(body.cells) > settings.max_smear_cells:
        raise TooLarge(
            f"{len(body.cells):,} cells sent; a field holds at most {settings.max_smear_cells:,} "
            "red cells (RBC_MAX_SMEAR_CELLS)"
        )
    for c in body.cells:
        _check_classes(
            [c.label, *([c.model_label] if c.model_label else []), *c.probabilities], classes
        )
    return body.cells


def _batch_items(body: BatchResultsIn, classes: Sequence[str]) -> list[BatchItemIn]:
    for item in body.results:
        if item.prediction is not None:
            _check_classes([item.prediction.label, *item.prediction.probabilities], classes)
    return body.results


def _csv_attachment(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/analyze/smear/counts", response_model=SmearCountsOut, responses=SMEAR_RESULTS_ERRORS)
def smear_counts(
    body: SmearCellsIn, predictor: PredictorDep, settings: SettingsDep
) -> SmearCountsOut:
    """Counts, percentages and ICSH grades of a field's red cells as they stand: send the
    `cells` of a POST /analyze/smear answer with `label` set to the class a person chose (and
    `model_label` to the classifier's); the rules are those of the analysis itself. The page
    calls it after each reclassification."""
    classes = predictor.classes
    cells = _smear_cells(body, classes, settings)
    counted = [c for c in cells if c.counted]
    counts = count_labels((c.label for c in counted), classes)
    shares = percentages(counts)
    return SmearCountsOut(
        cells_counted=len(counted),
        # A cell a person reclassified has been looked at.
        needs_review=sum(c.needs_review and not c.reclassified for c in counted),
        reclassified=sum(c.reclassified for c in cells),
        counts=counts,
        percentages=shares,
        grades=grades(shares),
        grading=SmearGrading(source=GRADING_SOURCE, scales=scales_for(list(classes))),
    )


@router.post(
    "/analyze/smear/cells.csv",
    response_class=Response,
    responses={**CSV_ANSWER, **SMEAR_RESULTS_ERRORS},
)
def smear_cells_csv(body: SmearCellsIn, predictor: PredictorDep, settings: SettingsDep) -> Response:
    """A field's red cells as CSV, reclassifications included (the same body as
    POST /analyze/smear/counts): id, x, y, x0, y0, x1, y1, at_border, counted, label,
    model_label, reclassified, confidence, needs_review and p_<class> for every class."""
    classes = predictor.classes
    cells = _smear_cells(body, classes, settings)
    return _csv_attachment(
        csv_text(smear_columns(classes), smear_rows(cells, classes)), "smear-cells.csv"
    )


@router.post("/predict/batch/summary", response_model=BatchSummary, responses=RESULTS_ERRORS)
def batch_results_summary(body: BatchResultsIn, predictor: PredictorDep) -> BatchSummary:
    """The summary of the `results` of one or more POST /predict/batch answers together (a
    page that sent its files in several requests of RBC_MAX_FILES): the same counts as one
    answer's `summary`."""
    items = _batch_items(body, predictor.classes)
    predicted = [(i.prediction.label, i.prediction.needs_review) for i in items if i.prediction]
    return batch_summary(len(items), predicted, predictor.classes)


@router.post(
    "/predict/batch/results.csv",
    response_class=Response,
    responses={**CSV_ANSWER, **RESULTS_ERRORS},
)
def batch_results_csv(body: BatchResultsIn, predictor: PredictorDep) -> Response:
    """The `results` of one or more POST /predict/batch answers as CSV, one row per file:
    filename, label, confidence, needs_review, error and p_<class> for every class."""
    classes = predictor.classes
    items = _batch_items(body, classes)
    return _csv_attachment(
        csv_text(batch_columns(classes), batch_rows(items, classes)), "rbc-results.csv"
    )


@router.get("/model", responses=CARD_ERRORS)
def model_card(predictor: PredictorDep, detector: DetectorDep) -> dict[str, Any]:
    """The model card: classes, architecture, input size, normalisation, metrics, sha256...;
    the card's `tta_views` are those its metrics were measured with, `served_tta_views` those
    this service averages (the card's unless RBC_TTA_VIEWS overrides them), `served_engine` what
    classifies (ONNX Runtime or torch, with its version; RBC_ENGINE), `served_heatmaps` whether
    heatmaps are drawn (they need torch: a light serving install has none). `detector` is the
    cell detector's card (sources, scale, thresholds, metrics per source, sha256), or null when
    whole fields use the classical segmentation."""
    return {
        **dataclasses.asdict(predictor.card),
        "served_tta_views": predictor.tta_views,
        "served_engine": predictor.engine.name,
        "served_heatmaps": predictor.heatmaps_available,
        "detector": (
            {**dataclasses.asdict(detector.card), "served_engine": detector.engine_name}
            if detector is not None
            else None
        ),
    }
