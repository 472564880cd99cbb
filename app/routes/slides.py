"""The slides API: the fields of one sample kept in the records database (records/), analysed as
they arrive, reviewed cell by cell, signed off and reported (docs/slides.md).

Who acts is decided before a route runs, from the headers (app.middleware.IdentityGate, with
app/records_slot.py): the routes take the user from the request's state. Every write is one
transaction of the records store, which re-reads the user's role, refuses a signed-off slide and
checks versions inside it; its errors carry their HTTP status (records/errors.py, mapped in
app/errors.py). What a view shows (a slide with its counts and warnings, the CSV, the report)
is read in one transaction that sees one state of the slide (records/views.py); the routes only
translate records into answers."""

from __future__ import annotations

import io
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Path, Query, Request, Response, UploadFile
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.analysis import analyze_field, read_field
from app.config import Settings
from app.deps import DetectorDep, PredictorDep, SettingsDep, SlotDep
from app.errors import Unauthorized, smear_errors
from app.identity import Identity
from app.limits import StopCheck, stop_when_disconnected
from app.middleware import AUDIT_PREFIX
from app.records_slot import RecordsSlot
from app.routes.api import GATE_WHAT, GateDep, detector_sha256
from app.routes.slide_links import (
    ACCEPTED_LINKS,
    CELLS_LINKS,
    CREATED_LINKS,
    DELETED_LINKS,
    DETAIL_LINKS,
    FIELD_LINKS,
    LISTED_LINKS,
    QUEUE_LINKS,
    REOPENED_LINKS,
    REVIEWED_LINKS,
    SIGNED_LINKS,
)
from app.schemas import (
    MAX_DB_INT,
    NO_NUL,
    AcceptProposalsIn,
    AuditList,
    AuditOut,
    CellList,
    CellReviewIn,
    ErrorOut,
    FieldAddedOut,
    FieldModels,
    FieldOut,
    ProposalsAcceptedOut,
    QueuedCellOut,
    ReopenIn,
    ReviewQueueOut,
    SignOffIn,
    SlideCellOut,
    SlideDetailOut,
    SlideIn,
    SlideList,
    SlideOut,
    WeightsRef,
)
from app.sheets import CSV_COLUMNS, csv_text, slide_rows
from core.classify.predictor import Predictor, png_data_url
from core.detect.learned import CellDetector
from core.imageio import read_bounded
from core.smear.analysis import AnalysedField
from core.smear.grading import GRADING_SOURCE, scales_for
from core.smear.result import FieldResult, SmearGrading
from records.errors import NotFound, SlideDeleted, SlideSignedOff
from records.store import (
    MIN_CELLS_FOR_GRADING,
    AuditEntry,
    CellRecord,
    FieldInput,
    FieldRecord,
    SlideDetail,
    SlideRecord,
    SlideView,
    Store,
    User,
    accept_proposals,
    add_field,
    audit_trail,
    create_slide,
    delete_slide,
    field_cells,
    field_image,
    get_slide,
    list_cells,
    list_slides,
    remove_field,
    reopen,
    review_cell,
    review_queue,
    sign_off,
    slide_sheet,
    slide_view,
)

log = logging.getLogger(__name__)

SUPPORT_STATEMENT = (
    "A support tool, not a diagnosis: every class is a proposal for a qualified person to confirm."
)
PAGE = 1000  # the store's largest page
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
IMAGE_CSP = "default-src 'none'; sandbox"

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a malformed request (missing or invalid field)"},
    401: {
        "model": ErrorOut,
        "description": "users are configured and the bearer token is missing or not valid",
    },
    403: {
        "model": ErrorOut,
        "description": "the user's role does not allow it (viewers read only; deleting a slide "
        "is for admins), or a proxied request while no users are configured",
    },
    404: {"model": ErrorOut, "description": "no such slide, field or cell (on that slide)"},
    409: {
        "model": ErrorOut,
        "description": "a stale version (someone changed it since you read it: nothing was "
        "changed), or the slide is signed off (reopen it first), or reopening an open slide",
    },
    422: {
        "model": ErrorOut,
        "description": "a value the records refuse (a label that is "
        "not one of the classes, an empty sample id...)",
    },
    503: {
        "model": ErrorOut,
        "description": "the records database is unavailable or turned off (the detail says "
        "why), or the model is not loaded yet",
    },
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorOut, "description": "the body did not arrive in time"},
    413: {
        "model": ErrorOut,
        "description": "too many bytes or pixels, or too large once "
        "rescaled, or too many red cells: as POST /analyze/smear",
    },
    415: {"model": ErrorOut, "description": "an image format that is not accepted"},
    422: {
        "model": ErrorOut,
        "description": "empty, corrupt, not an image, or nothing to "
        "analyse (blank, saturated, no contrast): as POST /analyze/smear",
    },
}

router = APIRouter(prefix="/slides", tags=["slides"], responses=ERRORS)

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="UserToken",
    description="a user's token from `python -m records create-user`; not needed while no users "
    "are configured and the service listens on loopback only",
)


def current_user(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The records user app.middleware.IdentityGate attributed the request to (the bearer
    declaration only puts the token into the OpenAPI schema: the gate has checked it)."""
    identity = getattr(request.state, "identity", None)
    user = identity.user if isinstance(identity, Identity) else None
    if user is None:
        raise Unauthorized("the slides API needs a user's token: send 'Authorization: Bearer'")
    return user


def get_store(request: Request) -> Store:
    slot: RecordsSlot = request.state.records
    return slot.get_store()


UserDep = Annotated[User, Depends(current_user)]
StoreDep = Annotated[Store, Depends(get_store)]
SlideId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the slide's id")]
FieldId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the field's id")]
CellId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the cell's id")]
Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="items to skip")]


# --- records to answers ---------------------------------------------------------------------


def _slide_out(slide: SlideRecord) -> SlideOut:
    return SlideOut(**{name: getattr(slide, name) for name in SlideOut.model_fields})


def _field_out(f: FieldRecord) -> FieldOut:
    return FieldOut(
        id=f.id,
        ordinal=f.ordinal,
        filename=f.filename,
        media_type=f.media_type,
        image_bytes=f.image_bytes,
        width=f.width,
        height=f.height,
        microns_per_pixel=f.microns_per_pixel,
        scale_estimated=f.scale_estimated,
        cells=f.cell_count,
        cells_counted=f.cells_counted,
        notes=f.notes,
        models=FieldModels(
            classifier=WeightsRef(name=f.classifier_name, weights_sha256=f.classifier_sha256),
            detector=WeightsRef(name=f.detector_name, weights_sha256=f.detector_sha256),
        ),
        created_by=f.created_by,
        created_at=f.created_at,
    )


def _cell_out(c: CellRecord) -> SlideCellOut:
    return SlideCellOut(
        id=c.id,
        field_id=c.field_id,
        kind=c.kind,
        x=c.x,
        y=c.y,
        box=c.box,
        at_border=c.at_border,
        counted=c.counted,
        label=c.label,
        proposed_label=c.proposed_label,
        final_label=c.final_label,
        confidence=c.confidence,
        probabilities=c.probabilities,
        needs_review=c.needs_review,
        reviewed=c.reviewed,
        reviewed_by=c.reviewed_by,
        reviewed_at=c.reviewed_at,
        version=c.version,
    )


def _detail_out(view: SlideView) -> SlideDetailOut:
    slide, counts = view.slide, view.counts
    return SlideDetailOut(
        **_slide_out(slide).model_dump(),
        classes=counts["classes"],
        counts=counts["counts"],
        percentages=counts["percentages"],
        grades=counts["grades"],
        grading=SmearGrading(source=GRADING_SOURCE, scales=scales_for(list(counts["classes"]))),
        cells_counted=counts["cells_counted"],
        min_cells_for_grading=MIN_CELLS_FOR_GRADING,
        warnings=view.warnings,
        red_cells=counts["red_cells"],
        white_cells=counts["white_cells"],
        platelets=counts["platelets"],
        reviewed=counts["reviewed"],
        relabelled=counts["relabelled"],
        needs_review_remaining=counts["needs_review_remaining"],
        fields=[_field_out(f) for f in slide.fields],
    )


# --- slides ---------------------------------------------------------------------------------


@router.post("", status_code=201, response_model=SlideOut, responses=CREATED_LINKS)
def create(body: SlideIn, response: Response, user: UserDep, store: StoreDep) -> SlideOut:
    """Open a new slide for one sample (reviewer or admin). Fields are added one at a time."""
    slide = create_slide(store, user, body.sample_id, body.microns_per_pixel, body.notes)
    response.headers["Location"] = f"/slides/{slide.id}"
    return _slide_out(slide)


@router.get("", response_model=SlideList, responses=LISTED_LINKS)
def slides(
    _user: UserDep,
    store: StoreDep,
    status: Annotated[
        str | None, Query(pattern="^(open|signed_off)$", description="open or signed_off")
    ] = None,
    sample_id: Annotated[
        str | None, Query(max_length=128, pattern=NO_NUL, description="exactly this sample id")
    ] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SlideList:
    """Slides, newest first, with how many match in all."""
    items, total = list_slides(store, status, sample_id, offset, limit)
    return SlideList(items=[_slide_out(s) for s in items], total=total, offset=offset, limit=limit)


@router.get("/{slide_id}", response_model=SlideDetailOut, responses=DETAIL_LINKS)
def slide(
    slide_id: SlideId, _user: UserDep, store: StoreDep, settings: SettingsDep
) -> SlideDetailOut:
    """The slide over all its fields: counts, percentages and ICSH grades of the counted red
    cells by their current class (reviewed, else proposed), the number of cells the grades rest
    on with a warning when it is too few, white cells and platelets, the fields with the models
    (and their weights' sha256) that analysed each, status, version and sign-off. `classes`
    lists the laboratory's own labels (RBC_EXTRA_LABELS) after the classifier's."""
    return _detail_out(slide_view(store, slide_id, extra_labels=settings.extra_labels))


@router.delete("/{slide_id}", status_code=204, response_class=Response, responses=DELETED_LINKS)
def remove_slide(slide_id: SlideId, user: UserDep, store: StoreDep) -> Response:
    """Delete an open slide with its fields, images and cells (admins; reopen a signed-off slide
    first). The audit trail stays."""
    delete_slide(store, user, slide_id)
    return Response(status_code=204)


# --- fields ---------------------------------------------------------------------------------


def _media_type(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:  # the header only: decoded once already
        fmt = image.format or ""
    return Image.MIME.get(fmt.upper(), "application/octet-stream")


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


def _filename(upload: UploadFile, media_type: str) -> str:
    raw = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("", raw).strip()
    if not name:
        name = "field." + media_type.rsplit("/", 1)[-1]
    return name[-255:]


def _analyse(
    upload: UploadFile,
    predictor: Predictor,
    detector: CellDetector | None,
    settings: Settings,
    microns_per_pixel: float | None,
    check: StopCheck,
) -> tuple[bytes, str, AnalysedField]:
    """Read and analyse one field exactly as POST /analyze/smear does (same limits, same
    refusals); the bytes are kept to be stored."""
    name = f"'{upload.filename}'" if upload.filename else "the file"
    data = read_bounded(upload.file, settings.max_upload_bytes, name)
    with smear_errors():
        image = read_field(io.BytesIO(data), name, settings, microns_per_pixel)
        analysed = analyze_field(
            image, predictor, detector, settings, microns_per_pixel, check=check
        )
    return data, _media_type(data), analysed


def _field_input(
    upload: UploadFile,
    data: bytes,
    media_type: str,
    result: FieldResult,
    predictor: Predictor,
    detector: CellDetector | None,
) -> FieldInput:
    card = predictor.card
    assert card.state_sha256, "the predictor loads verified state files only"
    return FieldInput.analysed(
        result,
        filename=_filename(upload, media_type),
        image=data,
        media_type=media_type,
        classifier_name=card.name,
        classifier_sha256=card.state_sha256,
        detector_sha256=detector_sha256(detector),
        analysis={"review_threshold": predictor.review_threshold, "tta_views": predictor.tta_views},
    )


def _open_slide(store: Store, slide_id: int) -> SlideDetail:
    slide = get_slide(store, slide_id)
    if slide.status != "open":
        raise SlideSignedOff(f"slide {slide_id} is signed off: reopen it first")
    return slide


@router.post(
    "/{slide_id}/fields",
    status_code=201,
    response_model=FieldAddedOut,
    responses={**UPLOAD_ERRORS, **FIELD_LINKS},
)
async def add_slide_field(
    request: Request,
    slide_id: SlideId,
    file: Annotated[UploadFile, File(description="one smear field (PNG, JPEG, TIFF, BMP)")],
    user: UserDep,
    store: StoreDep,
    predictor: PredictorDep,
    detector: DetectorDep,
    settings: SettingsDep,
    gate: GateDep,
    overlay: Annotated[
        bool, Query(description="add the field with its cells outlined (PNG data URL)")
    ] = False,
) -> FieldAddedOut:
    """Analyse one field of the slide (at the slide's microns_per_pixel when set) exactly as
    POST /analyze/smear does, through the same slots for heavy work, then store it with every
    cell in one transaction: the field is there whole or not at all. A file that cannot be
    analysed gets the answer /analyze/smear gives and stores nothing. The weights' sha256 kept
    with the field are those of the files the service loaded."""
    slide_now = await run_in_threadpool(_open_slide, store, slide_id)  # before any work
    mpp = slide_now.microns_per_pixel
    async with gate.slot(GATE_WHAT["smear"]), stop_when_disconnected(request) as check:
        data, media_type, analysed = await run_in_threadpool(
            _analyse, file, predictor, detector, settings, mpp, check
        )
    field_in = _field_input(file, data, media_type, analysed.result, predictor, detector)
    del data
    record = await run_in_threadpool(add_field, store, user, slide_id, field_in)
    cells = await run_in_threadpool(field_cells, store, slide_id, record.id)
    return FieldAddedOut(
        field=_field_out(record),
        cells=[_cell_out(c) for c in cells["red_cell"]],
        white_cells=[_cell_out(c) for c in cells["white_cell"]],
        platelets=[_cell_out(c) for c in cells["platelet"]],
        scale=analysed.result.scale,
        overlay=png_data_url(analysed.overlay_png) if overlay else None,
    )


@router.delete("/{slide_id}/fields/{field_id}", status_code=204, response_class=Response)
def remove_slide_field(
    slide_id: SlideId, field_id: FieldId, user: UserDep, store: StoreDep
) -> Response:
    """Remove a field, its image and its cells (reviews included) from an open slide; the
    counts follow. Audited."""
    remove_field(store, user, slide_id, field_id)
    return Response(status_code=204)


@router.get(
    "/{slide_id}/fields/{field_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the bytes as uploaded"}},
)
def slide_field_image(
    slide_id: SlideId, field_id: FieldId, _user: UserDep, store: StoreDep
) -> Response:
    """The field's image, the bytes as uploaded, with their media type (read from the bytes
    when the field was added)."""
    data, media_type = field_image(store, slide_id, field_id)
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Security-Policy": IMAGE_CSP, "Content-Disposition": "inline"},
    )


# --- cells ----------------------------------------------------------------------------------


@router.get("/{slide_id}/cells", response_model=CellList, responses=CELLS_LINKS)
def cells(
    slide_id: SlideId,
    _user: UserDep,
    store: StoreDep,
    label: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_NUL, description="current class (reviewed, else proposed)"),
    ] = None,
    needs_review: Annotated[
        bool | None,
        Query(description="true: flagged by the analysis and not reviewed yet; false: the rest"),
    ] = None,
    kind: Annotated[
        str, Query(pattern="^(red_cell|white_cell|platelet)$", description="which cells")
    ] = "red_cell",
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE)] = 200,
) -> CellList:
    """The slide's cells over all its fields, least confident first, with how many match."""
    items, total = list_cells(store, slide_id, label, needs_review, kind, offset, limit)
    return CellList(items=[_cell_out(c) for c in items], total=total, offset=offset, limit=limit)


@router.patch("/{slide_id}/cells/{cell_id}", response_model=SlideCellOut, responses=REVIEWED_LINKS)
def review(
    slide_id: SlideId,
    cell_id: CellId,
    body: CellReviewIn,
    user: UserDep,
    store: StoreDep,
    slot: SlotDep,
    settings: SettingsDep,
) -> SlideCellOut:
    """Reclassify a red cell (`label`) or confirm it (no label), with the cell's `version` as
    you read it. 409 when the version is stale (nothing changes: read the cell again) or the
    slide is signed off. Allowed labels: the served classifier's classes (before it has loaded,
    those of the classifier that analysed the cell) and the laboratory's own
    (RBC_EXTRA_LABELS). Counts and grades follow at once."""
    classes = slot.predictor.classes if slot.predictor is not None else None
    cell = review_cell(
        store, user, slide_id, cell_id, body.version, body.label, classes, settings.extra_labels
    )
    return _cell_out(cell)


@router.get("/{slide_id}/review-queue", response_model=ReviewQueueOut, responses=QUEUE_LINKS)
def queue(
    slide_id: SlideId,
    _user: UserDep,
    store: StoreDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE)] = 200,
) -> ReviewQueueOut:
    """The slide's red cells that nobody has reviewed yet, those whose review teaches the
    classifier most first: within each proposed class the least margin (top-1 minus top-2
    probability) first, the classes taken in turn so that every one appears early, and every
    tenth place a cell drawn at random (`spot_check`), so that confident cells are checked too.
    The order depends only on the slide's cells: the same on every call."""
    items, total = review_queue(store, slide_id, offset, limit)
    return ReviewQueueOut(
        items=[
            QueuedCellOut(
                **_cell_out(q.cell).model_dump(), margin=q.cell.margin, spot_check=q.spot_check
            )
            for q in items
        ],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.post(
    "/{slide_id}/fields/{field_id}/accept-proposals",
    response_model=ProposalsAcceptedOut,
    responses=ACCEPTED_LINKS,
)
def accept_field_proposals(
    slide_id: SlideId,
    field_id: FieldId,
    body: AcceptProposalsIn,
    user: UserDep,
    store: StoreDep,
) -> ProposalsAcceptedOut:
    """Accept every red cell of the field that nobody has reviewed yet at its proposed class,
    in one transaction (all of them or none), each audited as a confirmation. Cells already
    reviewed keep their review. `version` is the slide's version as you saw it: 409 if anything
    changed since (nothing changes: read the slide again), or if the slide is signed off."""
    done = accept_proposals(store, user, slide_id, field_id, body.version)
    return ProposalsAcceptedOut(
        field_id=done.field_id,
        accepted=len(done.cells),
        cells=[_cell_out(c) for c in done.cells],
        slide=_slide_out(done.slide),
    )


# --- sign-off, audit ------------------------------------------------------------------------


@router.post("/{slide_id}/sign-off", response_model=SlideOut, responses=SIGNED_LINKS)
def sign(slide_id: SlideId, body: SignOffIn, user: UserDep, store: StoreDep) -> SlideOut:
    """Sign the slide off with its `version` as you reviewed it (409 if anything changed
    since, or if it is signed off): it becomes read-only, and who and when are recorded."""
    return _slide_out(sign_off(store, user, slide_id, body.version))


@router.post("/{slide_id}/reopen", response_model=SlideOut, responses=REOPENED_LINKS)
def reopen_slide(slide_id: SlideId, body: ReopenIn, user: UserDep, store: StoreDep) -> SlideOut:
    """Reopen a signed-off slide for changes; the reason goes into the audit trail."""
    return _slide_out(reopen(store, user, slide_id, body.reason))


def _audit_out(entries: list[AuditEntry]) -> AuditList:
    return AuditList(
        items=[AuditOut(**{n: getattr(e, n) for n in AuditOut.model_fields}) for e in entries]
    )


@router.get("/{slide_id}/audit", response_model=AuditList)
def audit(slide_id: SlideId, _user: UserDep, store: StoreDep) -> AuditList:
    """Everything done to the slide, oldest first: who, when, which cell, from, to. Once the
    slide is deleted this answers 404, like everything under it: its trail is kept, at
    GET /audit?slide_id=."""
    try:
        return _audit_out(audit_trail(store, slide_id, deleted=False))
    except SlideDeleted as exc:
        raise NotFound(f"{exc}; its audit trail is kept: GET /audit?slide_id={slide_id}") from None


audit_router = APIRouter(prefix=AUDIT_PREFIX, tags=["slides"], responses=ERRORS)


@audit_router.get("", response_model=AuditList)
def audit_of_any_slide(
    _user: UserDep,
    store: StoreDep,
    slide_id: Annotated[
        int, Query(ge=1, le=MAX_DB_INT, description="the slide's id, deleted or not")
    ],
) -> AuditList:
    """Everything done to a slide, oldest first, whether the slide still exists or was deleted
    (who deleted it, when, with how many fields and cells): the laboratory's record outlives
    the slide. 404 when there was never such a slide."""
    return _audit_out(audit_trail(store, slide_id, deleted=True))


# --- exports --------------------------------------------------------------------------------


@router.get(
    "/{slide_id}/cells.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per cell"}},
)
def cells_csv(slide_id: SlideId, _user: UserDep, store: StoreDep) -> Response:
    """Every cell of the slide (red cells, then white cells and platelets), field by field:
    position, proposed class, final class, confidence, who reviewed it and when."""
    detail, every = slide_sheet(store, slide_id)
    return Response(
        csv_text(CSV_COLUMNS, slide_rows(detail.fields, every)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="slide-{slide_id}-cells.csv"'},
    )


def _distinct_models(fields: tuple[FieldRecord, ...]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str, str | None], list[int]] = {}
    for f in fields:
        for what, name, sha in (
            ("classifier", f.classifier_name, f.classifier_sha256),
            ("detector", f.detector_name, f.detector_sha256),
        ):
            seen.setdefault((what, name, sha), []).append(f.ordinal)
    return [
        {"what": what, "name": name, "sha256": sha, "fields": ordinals}
        for (what, name, sha), ordinals in seen.items()
    ]


@router.get("/{slide_id}/report", response_class=HTMLResponse)
def report(request: Request, slide_id: SlideId, _user: UserDep, store: StoreDep) -> HTMLResponse:
    """A printable HTML report of the slide: sample id, fields, cells counted, counts,
    percentages and grades, reviewer and sign-off time, models and their weights' sha256,
    and the support-tool statement. Everything typed by a user is escaped."""
    view = slide_view(store, slide_id)
    detail, counts = view.slide, view.counts
    rows = [
        {
            "label": label,
            "count": n,
            "percentage": counts["percentages"][label],
            "grade": counts["grades"].get(label, ""),
        }
        for label, n in counts["counts"].items()
    ]
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request,
        "report.html",
        {
            "slide": detail,
            "counts": counts,
            "rows": rows,
            "warnings": view.warnings,
            "fields": [_field_out(f) for f in detail.fields],
            "models": _distinct_models(detail.fields),
            "grading_source": GRADING_SOURCE,
            "statement": SUPPORT_STATEMENT,
            "generated_at": datetime.now(UTC),
        },
    )
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response
