"""Response bodies of the API (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from app.versions import ID_PATTERN
from core.smear.analysis import MAX_MICRONS_PER_PIXEL, MIN_MICRONS_PER_PIXEL
from core.smear.result import (  # noqa: F401  (SmearScale, SmearGrading: API names, used there)
    FieldCell,
    FieldObject,
    FieldResult,
    SmearFamiliarity,
    SmearFocus,
    SmearGrading,
    SmearScale,
)

# What the records database can hold: ids and versions are INTEGER columns (32 bits in
# PostgreSQL), and PostgreSQL's text refuses NUL. Requests are bounded to that, so a value the
# database cannot take is a 400, never a 500.
MAX_DB_INT = 2**31 - 1
NO_NUL = r"^[^\x00]*$"


class ErrorOut(BaseModel):
    """Every error answer of the service."""

    detail: str = Field(description="what went wrong, in plain words")


class ModelRef(BaseModel):
    name: str
    architecture: str
    weights_file: str = Field(description="the weights file the service loaded (model_state.pt)")
    weights_sha256: str = Field(
        description="sha256 of that file, as loaded (checked against the model card before it "
        "was read); not the hash of export.pkl, which the service never reads"
    )
    tta_views: int = Field(description="test-time views averaged per cell (1: none)")
    calibrated: bool = Field(
        False,
        description="the model has a calibration (calibration.json): confidences are "
        "temperature-scaled and each cell gets a familiarity score",
    )


class CellPrediction(BaseModel):
    label: str = Field(description="the most probable class")
    confidence: float = Field(description="probability of `label`")
    probabilities: dict[str, float] = Field(
        description="every class of the model, in the model's order, to its probability (sum 1)"
    )
    needs_review: bool = Field(
        description="confidence is below the review threshold; or a size class (macrocyte, "
        "microcyte) was proposed where size cannot be judged: no scale given, or a cell cut by "
        "the image edge"
    )
    heatmap: str | None = Field(
        None,
        description="LayerCAM over the cell as a PNG data URL, when asked with ?heatmap=true "
        "(over the framed crop when a scale was given); null where the service runs without "
        "torch, which heatmaps need (GET /model: served_heatmaps)",
    )
    familiarity: float | None = Field(
        None,
        description="distance of the cell to the model's training cells in its feature space "
        "(under 1 for a typical training cell; larger: less like them); null for a model "
        "without calibration statistics",
    )
    unfamiliar: bool = Field(
        False,
        description="the cell is farther from the training cells than the model's threshold: "
        "unlike what it learnt from, so it needs review",
    )


class CellScale(BaseModel):
    """How the scale of single-cell images was handled (see `notes`)."""

    microns_per_pixel: float | None = Field(
        None, description="the scale given; absent (or null) when none was given"
    )
    known: bool = Field(
        description="a scale was given, so each image was brought to the training scale and "
        "cut around its cell (`framing`); false: classified as given, as a training-size crop "
        "at the training scale, and size classes (macrocyte, microcyte) marked for review"
    )
    training_microns_per_pixel: float


class Framing(BaseModel):
    """Where the crop the classifier saw was cut (only with a scale)."""

    cell_found: bool = Field(
        description="a red cell was found near the image centre and the crop is centred on it; "
        "false: none was (pale, a platelet, no cell) and the crop is centred on the image"
    )
    at_border: bool = Field(
        description="the cell touches the image edge (size classes are marked for review)"
    )
    x: float = Field(description="the crop's centre, in the uploaded image's pixels")
    y: float
    factor: float = Field(
        description="training-scale pixels per uploaded pixel (microns_per_pixel / 0.19)"
    )


class PredictionOut(CellPrediction):
    review_threshold: float
    model: ModelRef
    scale: CellScale
    framing: Framing | None = Field(
        default=None, description="where the crop was cut; with a scale only"
    )
    notes: list[str] = Field(description="what the answer rests on, in plain words")


class ItemError(BaseModel):
    status: int = Field(description="the HTTP status this file alone would have had")
    detail: str


class BatchItem(BaseModel):
    index: int
    filename: str | None = Field(None, description="the file's name as sent; absent when none")
    prediction: CellPrediction | None = None
    error: ItemError | None = None
    framing: Framing | None = Field(
        default=None, description="where the crop was cut; with a scale only"
    )


class BatchSummary(BaseModel):
    total: int
    classified: int
    failed: int
    needs_review: int
    counts: dict[str, int] = Field(description="cells per class (every class of the model)")
    percentages: dict[str, float] = Field(description="share of the classified cells, in %")


class BatchOut(BaseModel):
    results: list[BatchItem]
    summary: BatchSummary
    review_threshold: float
    model: ModelRef
    scale: CellScale
    notes: list[str] = Field(description="what the answers rest on, in plain words")


class Health(BaseModel):
    status: str


class DatabaseState(BaseModel):
    status: str = Field(description="'ready', 'unavailable' (slides answer 503) or 'off'")
    detail: str | None = Field(None, description="why it is not ready")


class Ready(BaseModel):
    status: str
    model: str
    load_seconds: float
    database: DatabaseState = Field(
        description="the records database behind /slides; the single-cell API works without it"
    )


class SmearCellOut(FieldCell):
    crop: str | None = Field(
        None, description="the crop the classifier saw (PNG data URL), with ?crops=true"
    )


class OtherCellOut(FieldObject):
    crop: str | None = Field(None, description="a view of it (PNG data URL), with ?crops=true")


class SmearOut(FieldResult):
    """A field's result (core.smear.result.FieldResult: the one shape of a field's result) with
    what the service adds: the outlined image, the models that made it, crops on request."""

    cells: Sequence[SmearCellOut]
    white_cells: Sequence[OtherCellOut] = Field(default_factory=list)
    platelets: Sequence[OtherCellOut] = Field(
        default_factory=list, description="platelets of this field (the count feeds an estimate)"
    )
    detector_weights_sha256: str | None = Field(
        None,
        description="sha256 of the detector weights loaded (detector_state.pt); "
        "null for the classical segmentation",
    )
    overlay: str = Field(description="the image with every cell outlined by class (PNG data URL)")
    review_threshold: float
    model: ModelRef


# --- slides (app/routes/slides.py, docs/slides.md) -------------------------------------------


def _json_number(value: object) -> object:
    """Numbers only: JSON's `true` and "3" are no scale and no version (pydantic would coerce
    them). An integral float such as 3.0 is an integer in JSON Schema, and is taken as one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a JSON number is needed")
    return value


# A version as the records keep it, and a slide's scale: the bounds go on the number type before
# the validator (after it, or on a union, pydantic writes them into the schema as `ge`/`le`,
# keywords JSON Schema does not know, and clients and fuzzers then ignore them).
Version = Annotated[int, Field(ge=1, le=MAX_DB_INT), BeforeValidator(_json_number)]
Scale = Annotated[
    float,
    Field(ge=MIN_MICRONS_PER_PIXEL, le=MAX_MICRONS_PER_PIXEL),
    BeforeValidator(_json_number),
]


class SlideIn(BaseModel):
    sample_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=NO_NUL,
        description="the laboratory's own id of the sample (free text; no patient data)",
    )
    microns_per_pixel: Scale | None = Field(
        None,
        description="the fields' scale; every field of the slide is analysed at it (unset: "
        "estimated per field from its own red cells, or the training scale assumed)",
    )
    notes: str = Field("", max_length=10_000, pattern=NO_NUL)


class SlideOut(BaseModel):
    id: int
    sample_id: str
    microns_per_pixel: float | None
    notes: str
    status: str = Field(description="'open' or 'signed_off' (read-only until reopened)")
    version: int = Field(
        description="goes up with every change to the slide or anything on it; send it with "
        "a sign-off"
    )
    created_by: str
    created_at: datetime
    signed_off_by: str | None
    signed_off_at: datetime | None
    field_count: int


class SlideList(BaseModel):
    items: list[SlideOut]
    total: int = Field(description="slides matching the filters, all pages together")
    offset: int
    limit: int


class WeightsRef(BaseModel):
    name: str
    weights_sha256: str | None = Field(
        description="sha256 of the weights file the service loaded (model_state.pt for the "
        "classifier, detector_state.pt for the detector); null for the classical segmentation"
    )


class FieldModels(BaseModel):
    classifier: WeightsRef
    detector: WeightsRef


class FieldOut(BaseModel):
    id: int
    ordinal: int = Field(description="1, 2, ... in upload order")
    filename: str
    media_type: str
    image_bytes: int
    width: int
    height: int
    microns_per_pixel: float | None = Field(description="the scale the field was analysed at")
    scale_estimated: bool
    cells: int = Field(description="everything found: red cells, white cells and platelets")
    cells_counted: int = Field(description="red cells in the counts (those at the edge are not)")
    notes: list[str]
    models: FieldModels
    created_by: str
    created_at: datetime


class SlideCellOut(BaseModel):
    id: int
    field_id: int
    kind: str = Field(description="red_cell, white_cell or platelet")
    x: float = Field(description="centre, pixels of the field's image")
    y: float
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1")
    at_border: bool
    counted: bool
    label: str | None = Field(description="the current class: the reviewed one, else proposed")
    proposed_label: str | None = Field(description="the classifier's proposal")
    final_label: str | None = Field(description="the reviewer's class; null until reviewed")
    confidence: float | None
    probabilities: dict[str, float] | None
    needs_review: bool = Field(description="flagged by the analysis (stays set once reviewed)")
    reviewed: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    version: int = Field(description="send it back with a review (409 when it is stale)")


class CellList(BaseModel):
    items: list[SlideCellOut]
    total: int
    offset: int
    limit: int


class SlideDetailOut(SlideOut):
    classes: list[str]
    counts: dict[str, int] = Field(description="counted red cells per current class, all fields")
    percentages: dict[str, float]
    grades: dict[str, str] = Field(description="'none', '1+', '2+' or '3+' per graded class")
    grading: SmearGrading
    cells_counted: int
    min_cells_for_grading: int = Field(
        description="red cells the grades need to be read as grades (docs/slides.md)"
    )
    warnings: list[str] = Field(description="what a reader of these figures must know, in words")
    red_cells: int = Field(description="every red cell found, counted or not")
    white_cells: int
    platelets: int
    reviewed: int
    relabelled: int
    needs_review_remaining: int = Field(description="flagged by the analysis, not yet reviewed")
    fields: list[FieldOut]


class FieldAddedOut(BaseModel):
    field: FieldOut
    cells: list[SlideCellOut] = Field(description="the field's red cells, least confident first")
    white_cells: list[SlideCellOut]
    platelets: list[SlideCellOut]
    scale: SmearScale
    overlay: str | None = Field(
        None, description="the field with its cells outlined (PNG data URL), with ?overlay=true"
    )


class CellReviewIn(BaseModel):
    label: str | None = Field(
        None,
        max_length=64,
        pattern=NO_NUL,
        description="the class to set; omit it (or null) to confirm the current one",
    )
    version: Version = Field(description="the cell's version as you read it")


class SignOffIn(BaseModel):
    version: Version = Field(description="the slide's version as you reviewed it")


class ReopenIn(BaseModel):
    reason: str = Field(
        min_length=1, max_length=2000, pattern=NO_NUL, description="why; kept in the audit trail"
    )


class AcceptProposalsIn(BaseModel):
    version: Version = Field(
        description="the slide's version as you saw it (409 if anything changed since)"
    )


class ProposalsAcceptedOut(BaseModel):
    field_id: int
    accepted: int = Field(
        description="red cells of the field accepted at their proposed class now (0: none was "
        "left to review, and nothing changed)"
    )
    cells: list[SlideCellOut] = Field(
        description="those cells as they are now, each with its new version, least confident first"
    )
    slide: SlideOut = Field(description="the slide as it is now, with its new version")


class QueuedCellOut(SlideCellOut):
    margin: float | None = Field(
        description="the classifier's top-1 minus top-2 probability; null when the cell has no "
        "probabilities"
    )
    spot_check: bool = Field(
        description="drawn at random (one place in ten) so that confident cells are checked "
        "too, rather than placed for its margin"
    )


class ReviewQueueOut(BaseModel):
    items: list[QueuedCellOut]
    total: int = Field(description="red cells not reviewed yet, all pages together")
    offset: int
    limit: int


class AuditOut(BaseModel):
    id: int
    at: datetime
    user: str
    cell_id: int | None
    action: str
    from_value: str | None
    to_value: str | None
    detail: dict[str, Any]


class AuditList(BaseModel):
    items: list[AuditOut]


# --- a page's results sent back (POST /analyze/smear/counts, /analyze/smear/cells.csv,
# /predict/batch/summary, /predict/batch/results.csv): the page keeps what the person changed
# and the server counts and writes it, so that the rules live in core alone ----------------------

# Class names are the served model's (checked by the route, 422); the bound is the one reviews
# have (CellReviewIn.label).
MAX_LABEL = 64
# A model has a handful of classes (Chula: 12); a probabilities object larger than this is no
# model's.
MAX_CLASSES = 64
# Results of /predict/batch sent back at once: the page sends every file it analysed, over
# several requests of RBC_MAX_FILES each; beyond this, 400.
MAX_BATCH_RESULTS = 10_000

JsonBool = Annotated[bool, Field(strict=True)]  # JSON's true and false only, never "yes" or 1
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL, pattern=NO_NUL)]
# A probabilities key: a pattern on keys becomes patternProperties, which would leave the other
# keys' values unconstrained in the document; a key that is no class is a 422 anyway.
ClassKey = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]
Probability = Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(_json_number)]
Coordinate = Annotated[float, Field(ge=0, le=MAX_DB_INT), BeforeValidator(_json_number)]
UInt = Annotated[int, Field(ge=0, le=MAX_DB_INT), BeforeValidator(_json_number)]


class SmearCellIn(BaseModel):
    """A red cell of a field as the page holds it: the answer's cell (POST /analyze/smear), with
    `label` the class the person chose and `model_label` the classifier's."""

    id: UInt = Field(description="the cell's id in the field's answer")
    label: Label = Field(description="the current class (the person's, else the model's)")
    counted: JsonBool = Field(description="in the counts (cells at the edge are not)")
    needs_review: JsonBool = Field(description="flagged by the analysis")
    model_label: Label | None = Field(
        None,
        description="the classifier's class; differs from `label` when the person reclassified "
        "the cell (unset: the same as `label`)",
    )
    x: Coordinate | None = Field(None, description="centre, pixels of the uploaded image")
    y: Coordinate | None = None
    box: tuple[UInt, UInt, UInt, UInt] | None = Field(
        None, description="x0, y0, x1, y1 (x1, y1 exclusive)"
    )
    at_border: JsonBool = False
    confidence: Probability | None = Field(None, description="probability of `model_label`")
    probabilities: dict[ClassKey, Probability] = Field(
        default_factory=dict, max_length=MAX_CLASSES, description="every class's probability"
    )

    @property
    def reclassified(self) -> bool:
        return self.model_label is not None and self.label != self.model_label


class SmearCellsIn(BaseModel):
    cells: list[SmearCellIn] = Field(
        description="every red cell of one field, counted or not (at most RBC_MAX_SMEAR_CELLS, "
        "as for an analysed field: 413 beyond)"
    )


class SmearCountsOut(BaseModel):
    """What is counted from a field's cells as they stand (core.smear.counting, grading)."""

    cells_counted: int
    needs_review: int = Field(
        description="counted cells flagged by the analysis that the person has not reclassified"
    )
    reclassified: int = Field(description="cells whose class differs from the model's")
    counts: dict[str, int] = Field(description="counted cells per class (every class of the model)")
    percentages: dict[str, float] = Field(description="share of the counted cells, in %")
    grades: dict[str, str] = Field(description="'none', '1+', '2+' or '3+' per graded class")
    grading: SmearGrading


class PredictionIn(BaseModel):
    label: Label
    confidence: Probability
    probabilities: dict[ClassKey, Probability] = Field(default_factory=dict, max_length=MAX_CLASSES)
    needs_review: JsonBool


class ItemErrorIn(BaseModel):
    status: Annotated[int, Field(ge=400, le=599), BeforeValidator(_json_number)] | None = None
    detail: str = Field(max_length=10_000, pattern=NO_NUL)


class BatchItemIn(BaseModel):
    """One result of POST /predict/batch as it answered it (`index`, `framing` and the
    heatmap may be left in or out)."""

    filename: str | None = Field(None, max_length=1024, pattern=NO_NUL)
    prediction: PredictionIn | None = Field(None, description="absent: the file failed")
    error: ItemErrorIn | None = None


class BatchResultsIn(BaseModel):
    results: list[BatchItemIn] = Field(
        max_length=MAX_BATCH_RESULTS,
        description="the results of one or more POST /predict/batch answers, in order",
    )


# --- model versions (GET /models, POST /models/{model_id}/activate, /models/rollback) ----------


class Headline(BaseModel):
    """A model's figures on the laboratory's held-out test cells (adaptation.json)."""

    accuracy: float | None = None
    accuracy_weighed: float | None = Field(
        None,
        description="the accuracy with each test cell weighed to stand for all the cells of its "
        "slide (reviews that follow the review queue are mostly doubtful cells); null when the "
        "import recorded no other cells, and in folders written before it",
    )
    macro_f1: float | None = None
    unflagged_share: float | None = Field(None, description="share not flagged for review")
    called_normal: float | None = Field(None, description="share called normal")
    abnormal_unflagged: float | None = Field(
        None, description="share called abnormal without a review flag"
    )
    abnormal_missed: float | None = Field(
        None,
        description="share of the abnormal cells called normal without a review flag (what a "
        "model taught on mostly normal cells risks); null in folders written before it",
    )


class AdaptationOut(BaseModel):
    base_model: str = Field(description="the name of the model it was adapted from")
    before: Headline = Field(description="the base model on the laboratory's test cells")
    after: Headline = Field(description="this model on the same cells")
    fit_chosen: str | None = Field(
        None,
        description="the last layer: the fit adapt chose (e.g. 'l2=0.1'), or 'base' when no fit "
        "beat the base model on slides it was not fitted on, so that only the calibration is "
        "the laboratory's; null when adaptation.json does not say",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="what the laboratory should know before activating it, from what was "
        "reviewed (e.g. nearly every reviewed cell normal: abnormal cells in its stain risk being "
        "called normal without a flag); empty when none",
    )
    figure_url: str | None = Field(
        None,
        description="each class's recall before and after (PNG, GET /models/{id}/before-after.png"
        "); null when the folder has no figure",
    )


class ModelVersionOut(BaseModel):
    id: str = Field(description="the folder's name in RBC_MODELS_DIR; `default` is RBC_MODEL_DIR")
    name: str | None = Field(description="the model card's name (null when unreadable)")
    classes: list[str]
    created: str | None
    method: str | None
    weights_sha256: str | None = Field(description="the card's sha256 of model_state.pt")
    active: bool = Field(description="this instance serves it")
    error: str | None = Field(description="why it cannot be served; null when it can")
    adaptation: AdaptationOut | None = Field(
        description="before / after on the laboratory's held-out test cells (a model written "
        "by `python -m training adapt`); null otherwise"
    )
    report_url: str | None = Field(
        None,
        description="the version's report (Markdown, GET /models/{id}/report: its training or "
        "adaptation run, with the before / after table); null when the folder has none",
    )


class ActivationOut(BaseModel):
    id: int
    at: datetime
    user: str
    action: str = Field(description="activate or rollback")
    model_id: str
    model_name: str
    weights_sha256: str


class ModelVersionList(BaseModel):
    items: list[ModelVersionOut]
    active: str | None = Field(description="the id of the version this instance serves")
    switchable: bool = Field(description="RBC_MODELS_DIR is set: versions can be activated")
    activation: ActivationOut | None = Field(
        description="the newest activation (what every instance follows); null when none"
    )


class TeachIn(BaseModel):
    name: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="the new version's id (its folder's name in RBC_MODELS_DIR); default "
        "adapted-<UTC time>, e.g. adapted-20261207T101500Z",
    )


class TeachJobOut(BaseModel):
    id: int
    state: str = Field(description="queued, running, done or failed")
    name: str = Field(description="the version the job writes (a folder of RBC_MODELS_DIR)")
    stage: str = Field(description="where the run stands, in words")
    progress: float = Field(description="share of the run done, 0..1")
    message: str | None = Field(
        description="failed: why (adapt's own refusal, e.g. too few reviewed cells); otherwise "
        "a note (interrupted and started again), or null"
    )
    version_id: str | None = Field(description="done: the new version's id (not activated)")
    attempts: int = Field(description="runs started (a job interrupted twice fails)")
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None = Field(description="the runner's last sign of life")
    finished_at: datetime | None


class TeachJobList(BaseModel):
    items: list[TeachJobOut] = Field(description="the newest jobs, newest first")
    available: bool = Field(description="this service takes teach requests")
    reason: str | None = Field(description="why it does not; null when it does")
