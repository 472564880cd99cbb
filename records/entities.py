"""What the records module returns and takes: frozen dataclasses, never ORM objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from core.smear.result import FieldResult


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class Activation:
    """One switch of the served classifier (records/activations.py)."""

    id: int
    at: datetime
    user: str  # who switched
    action: str  # 'activate' | 'rollback'
    model_id: str  # the version's folder name
    model_name: str
    weights_sha256: str


@dataclass(frozen=True)
class TeachJob:
    """One "teach the model" job (records/teaching.py)."""

    id: int
    name: str  # the new version's folder name
    state: str  # 'queued' | 'running' | 'done' | 'failed'
    stage: str
    progress: float  # 0..1
    message: str | None  # failed: why; else a note ("interrupted; started again")
    version_id: str | None  # done: the new version's id
    attempts: int
    runner: str | None
    requested_by: str  # the user's name
    requested_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class SlideRecord:
    id: int
    sample_id: str
    microns_per_pixel: float | None
    notes: str
    status: str  # 'open' | 'signed_off'
    created_by: str  # user name
    created_at: datetime
    signed_off_by: str | None
    signed_off_at: datetime | None
    version: int  # give it back to sign_off / update_slide
    field_count: int


@dataclass(frozen=True)
class FieldRecord:
    """A field without its image bytes (`field_image` serves those)."""

    id: int
    slide_id: int
    ordinal: int
    filename: str
    media_type: str
    image_bytes: int
    width: int
    height: int
    microns_per_pixel: float | None
    scale_estimated: bool
    classifier_name: str
    classifier_sha256: str
    detector_name: str
    detector_sha256: str | None
    summary: dict[str, Any]  # the field's result without its cells (core.smear.result)
    created_by: str
    created_at: datetime
    cell_count: int

    # The summary as kept: fields added by older versions may lack a key, so each is read with
    # its default.
    @property
    def cells_counted(self) -> int:
        return int(self.summary.get("cells_counted", 0))

    @property
    def notes(self) -> list[str]:
        notes = self.summary.get("notes", [])
        return [str(n) for n in notes] if isinstance(notes, list) else []

    @property
    def unfamiliar(self) -> bool:
        return bool((self.summary.get("familiarity") or {}).get("unfamiliar"))


@dataclass(frozen=True)
class SlideDetail(SlideRecord):
    fields: tuple[FieldRecord, ...] = ()


@dataclass(frozen=True)
class CellRecord:
    id: int
    slide_id: int
    field_id: int
    kind: str
    x: float
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    at_border: bool
    counted: bool
    proposed_label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    needs_review: bool  # flagged by the analysis (stays set after a review)
    final_label: str | None  # None until reviewed
    reviewed_by: str | None
    reviewed_at: datetime | None
    version: int  # give it back to review_cell

    @property
    def label(self) -> str | None:
        """The current label: the reviewed one, else the proposed one."""
        return self.final_label if self.final_label is not None else self.proposed_label

    @property
    def reviewed(self) -> bool:
        return self.reviewed_at is not None

    @property
    def margin(self) -> float | None:
        return margin_of(self.probabilities)


def margin_of(probabilities: dict[str, float] | None) -> float | None:
    """How far the classifier's first choice led its second: the largest probability minus the
    next one (the largest itself with one class). None when no probabilities are kept."""
    if not probabilities:
        return None
    top = sorted(probabilities.values(), reverse=True)
    return top[0] - (top[1] if len(top) > 1 else 0.0)


@dataclass(frozen=True)
class QueuedCell:
    """A place in a slide's review queue (records.views.review_queue): the cell, and whether it
    is there as one of the queue's random checks rather than for its margin."""

    cell: CellRecord
    spot_check: bool


@dataclass(frozen=True)
class ProposalsAccepted:
    """What records.slides.accept_proposals did: the cells of the field it accepted at their
    proposed class (with their new versions), and the slide as it is now (its version)."""

    slide: SlideRecord
    field_id: int
    cells: tuple[CellRecord, ...]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    user: str  # name
    user_id: int
    slide_id: int
    cell_id: int | None
    action: str
    from_value: str | None
    to_value: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class ExportCell:
    """One red cell for a training-set exporter. `image` is the field's uploaded bytes, the same
    object for every cell of a field (read once per field)."""

    slide_id: int
    sample_id: str
    slide_status: str
    field_id: int
    field_ordinal: int
    filename: str
    media_type: str
    image: bytes = field(repr=False)
    microns_per_pixel: float | None
    classifier_name: str
    cell_id: int
    box: tuple[int, int, int, int]
    at_border: bool
    counted: bool
    proposed_label: str | None
    final_label: str | None
    label: str | None  # final if reviewed, else proposed
    reviewed_by: str | None
    reviewed_at: datetime | None


@dataclass(frozen=True)
class CellInput:
    """One cell as the analysis found it. Red cells carry the classifier's `label`,
    `confidence` and `probabilities`; white cells and platelets have `label=None` (their
    `confidence` is the detector's, if any)."""

    kind: str
    x: float
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the uploaded image's pixels
    at_border: bool = False
    counted: bool = True
    label: str | None = None
    confidence: float | None = None
    probabilities: Mapping[str, float] | None = None
    needs_review: bool = False


@dataclass(frozen=True)
class FieldInput:
    """One analysed field: the uploaded bytes, what the analysis used, and what it found."""

    filename: str
    image: bytes = field(repr=False)
    media_type: str
    width: int
    height: int
    classifier_name: str
    classifier_sha256: str  # of the weights the service loaded
    detector_name: str
    detector_sha256: str | None = None  # None for the classical detector
    microns_per_pixel: float | None = None
    scale_estimated: bool = False
    summary: Mapping[str, Any] = field(default_factory=dict)
    cells: Sequence[CellInput] = ()

    @classmethod
    def analysed(
        cls,
        result: FieldResult,
        *,
        filename: str,
        image: bytes,
        media_type: str,
        classifier_name: str,
        classifier_sha256: str,
        detector_sha256: str | None,
        analysis: Mapping[str, Any],
    ) -> FieldInput:
        """A field as the smear analysis returned it: every cell (red cells with their classes;
        white cells and platelets never counted) and its summary, with `analysis` (the settings
        it ran with: review threshold, test-time views)."""
        cells = [
            CellInput(
                kind="red_cell",
                x=c.x,
                y=c.y,
                box=c.box,
                at_border=c.at_border,
                counted=c.counted,
                label=c.label,
                confidence=c.confidence,
                probabilities=dict(c.probabilities),
                needs_review=c.needs_review,
            )
            for c in result.cells
        ]
        cells += [
            CellInput(
                kind=o.kind,
                x=o.x,
                y=o.y,
                box=o.box,
                at_border=o.at_border,
                counted=False,
                confidence=o.confidence,
            )
            for o in [*result.white_cells, *result.platelets]
        ]
        return cls(
            filename=filename,
            image=image,
            media_type=media_type,
            width=result.width,
            height=result.height,
            classifier_name=classifier_name,
            classifier_sha256=classifier_sha256,
            detector_name=result.detector,
            detector_sha256=detector_sha256,
            microns_per_pixel=result.scale.microns_per_pixel,
            scale_estimated=result.scale.estimated,
            summary={**result.summary().model_dump(mode="json"), **analysis},
            cells=cells,
        )


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
