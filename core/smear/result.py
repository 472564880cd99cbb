"""A field's result: the one typed shape that whole-smear analysis returns (core.smear.analysis),
the API answers (app.schemas.SmearOut adds the overlay and the models), `python -m app
analyze-smear` writes, and the records keep (records.entities.FieldInput.analysed). A change to
what a field returns is made here."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from core.smear.counting import count_labels, grades, percentages
from core.smear.grading import GRADING_SOURCE, scales_for


class FieldCell(BaseModel):
    """A red cell: found, classified, counted unless cut by the image's edge."""

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
    familiarity: float | None = Field(
        None, description="the cell's distance to the training cells (see POST /predict)"
    )


class FieldObject(BaseModel):
    """A white cell or platelet: found, shown and counted apart, never classified."""

    id: int
    kind: str = Field(description="white_cell or platelet")
    x: float = Field(description="centre, pixels of the uploaded image")
    y: float
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1")
    at_border: bool
    confidence: float = Field(description="the detector's score")


class SmearScale(BaseModel):
    microns_per_pixel: float | None = Field(
        None,
        description="the scale the field was analysed at; absent (or null) when none was "
        "given or estimated",
    )
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


class SmearFamiliarity(BaseModel):
    """How like the model's training images this field is (needs a calibrated model)."""

    score: float | None = Field(
        None, description="the median of the counted cells' familiarity distances"
    )
    threshold: float | None = Field(
        None, description="the model's field threshold (chosen on Chula validation fields)"
    )
    colour_score: float | None = Field(
        None,
        description="the field's stain and light: distance of its colour statistics to the "
        "nearest training fields' (null for a model calibrated without field colours)",
    )
    colour_threshold: float | None = Field(
        None, description="the model's colour threshold (chosen on Chula validation fields)"
    )
    unfamiliar: bool = Field(
        False,
        description="the field is unlike the images the model learnt from: a note says so, and "
        "its cells called abnormal or as far as the threshold are marked needs_review; review "
        "every cell",
    )
    because: list[str] = Field(
        default_factory=list,
        description="which signals found the field unfamiliar: 'cells' (the cells' features), "
        "'colours' (the field's stain and light)",
    )

    @classmethod
    def unknown(cls) -> SmearFamiliarity:
        """Not judged (a model without calibration statistics)."""
        return cls(
            score=None, threshold=None, colour_score=None, colour_threshold=None, unfamiliar=False
        )


class SmearFocus(BaseModel):
    """Whether the field is in focus (learned detector; null figures for the classical one)."""

    sharpness: float | None = Field(
        None, description="the field's sharpness at the detector's working scale"
    )
    threshold: float | None = Field(
        None, description="under it a field is called out of focus (research/focus_probe.py)"
    )
    out_of_focus: bool = Field(
        False, description="red cells are missed and misread on a blurred field: a note says so"
    )


class FieldSummary(BaseModel):
    """Everything about a field but its cells: what the records keep with it."""

    width: int
    height: int
    scale: SmearScale
    focus: SmearFocus = Field(
        default_factory=lambda: SmearFocus(sharpness=None, threshold=None, out_of_focus=False)
    )
    familiarity: SmearFamiliarity = Field(default_factory=lambda: SmearFamiliarity.unknown())
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
    needs_review: int
    counts: dict[str, int]
    percentages: dict[str, float]
    grades: dict[str, str] = Field(description="'none', '1+', '2+' or '3+' per graded class")
    grading: SmearGrading
    class_colours: dict[str, str]
    timings_ms: dict[str, float]
    notes: list[str]


class FieldResult(FieldSummary):
    """A field with its cells. The lists are sequences so that the API's answer can extend the
    cells (with their crops) and stay this type."""

    cells: Sequence[FieldCell]
    white_cells: Sequence[FieldObject] = Field(default_factory=list)
    platelets: Sequence[FieldObject] = Field(
        default_factory=list, description="platelets of this field (the count feeds an estimate)"
    )

    @property
    def counted(self) -> list[FieldCell]:
        return [c for c in self.cells if c.counted]

    def summary(self) -> FieldSummary:
        return FieldSummary.model_validate(self.model_dump(include=set(FieldSummary.model_fields)))

    @classmethod
    def tally(
        cls,
        cells: Sequence[FieldCell],
        classes: Sequence[str],
        *,
        white_cells: Sequence[FieldObject],
        platelets: Sequence[FieldObject],
        width: int,
        height: int,
        scale: SmearScale,
        focus: SmearFocus,
        familiarity: SmearFamiliarity,
        other_objects: int,
        detector: str,
        class_colours: dict[str, str],
        timings_ms: dict[str, float],
        notes: list[str],
    ) -> FieldResult:
        """The result of `cells`, with what is counted from them: counts, percentages, grades
        and the grading rule (the one place for them: core.smear.counting, core.smear.grading)."""
        counted = [c for c in cells if c.counted]
        counts = count_labels((c.label for c in counted), classes)
        shares = percentages(counts)
        return cls(
            width=width,
            height=height,
            scale=scale,
            focus=focus,
            familiarity=familiarity,
            cells_found=len(cells),
            cells_counted=len(counted),
            cells_at_border=sum(c.at_border for c in cells),
            other_objects=other_objects,
            detector=detector,
            white_cells_found=len(white_cells),
            platelets_found=len(platelets),
            needs_review=sum(c.needs_review for c in counted),
            counts=counts,
            percentages=shares,
            grades=grades(shares),
            grading=SmearGrading(source=GRADING_SOURCE, scales=scales_for(list(classes))),
            class_colours=class_colours,
            timings_ms=timings_ms,
            notes=notes,
            cells=cells,
            white_cells=white_cells,
            platelets=platelets,
        )
