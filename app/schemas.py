"""Response bodies of the API (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every error answer of the service."""

    detail: str = Field(description="what went wrong, in plain words")


class ModelRef(BaseModel):
    name: str
    architecture: str
    weights_sha256: str
    tta_views: int = Field(description="test-time views averaged per cell (1: none)")


class CellPrediction(BaseModel):
    label: str = Field(description="the most probable class")
    confidence: float = Field(description="probability of `label`")
    probabilities: dict[str, float] = Field(
        description="every class of the model, in the model's order, to its probability (sum 1)"
    )
    needs_review: bool = Field(description="confidence is below the review threshold")
    heatmap: str | None = Field(
        None, description="Grad-CAM over the cell as a PNG data URL, when asked with ?heatmap=true"
    )


class PredictionOut(CellPrediction):
    review_threshold: float
    model: ModelRef


class ItemError(BaseModel):
    status: int = Field(description="the HTTP status this file alone would have had")
    detail: str


class BatchItem(BaseModel):
    index: int
    filename: str | None
    prediction: CellPrediction | None = None
    error: ItemError | None = None


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


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str
    load_seconds: float


class SmearCellOut(BaseModel):
    id: int
    x: float = Field(description="centre, pixels of the uploaded image")
    y: float
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 (x1, y1 exclusive)")
    at_border: bool = Field(description="the cell touches the image edge")
    counted: bool = Field(description="in the counts (cells at the edge are not)")
    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    crop: str | None = Field(
        None, description="the crop the classifier saw (PNG data URL), with ?crops=true"
    )


class OtherCellOut(BaseModel):
    id: int
    kind: str = Field(description="white_cell or platelet")
    x: float = Field(description="centre, pixels of the uploaded image")
    y: float
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1")
    at_border: bool
    confidence: float = Field(description="the detector's score")
    crop: str | None = Field(None, description="a view of it (PNG data URL), with ?crops=true")


class SmearScale(BaseModel):
    microns_per_pixel: float | None = Field(description="the scale the field was analysed at")
    known: bool = Field(description="given with the request")
    estimated: bool = Field(
        False,
        description="estimated from the field's own red cells (size classes are then relative)",
    )
    training_microns_per_pixel: float


class SmearGrading(BaseModel):
    source: str
    scales: dict[str, dict[str, object]] = Field(
        description="per graded class: lowest rounded percentage of 1+, 2+, 3+ and the rounding"
    )


class SmearOut(BaseModel):
    width: int
    height: int
    scale: SmearScale
    cells_found: int
    cells_counted: int
    cells_at_border: int
    other_objects: int = Field(
        description="objects that are not red cells (white cells, platelets; with the classical "
        "detector, dark objects: white cells, fibres, dirt), not counted"
    )
    detector: str = Field(description='"learned:<name>" or "classical"')
    white_cells_found: int
    platelets_found: int
    white_cells: list[OtherCellOut] = Field(default_factory=list)
    platelets: list[OtherCellOut] = Field(
        default_factory=list, description="platelets of this field (the count feeds an estimate)"
    )
    needs_review: int
    counts: dict[str, int]
    percentages: dict[str, float]
    grades: dict[str, str] = Field(description="'none', '1+', '2+' or '3+' per graded class")
    grading: SmearGrading
    class_colours: dict[str, str]
    timings_ms: dict[str, float]
    notes: list[str]
    cells: list[SmearCellOut]
    overlay: str = Field(description="the image with every cell outlined by class (PNG data URL)")
    review_threshold: float
    model: ModelRef
