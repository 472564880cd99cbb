"""Response bodies of the API (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    architecture: str
    weights_sha256: str


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
