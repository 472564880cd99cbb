"""Model versions (app/versions.py; docs/service.md, "Model versions"): list the classifiers a
laboratory may serve, activate one, roll back, and teach a new one (app/teaching.py: a job run
outside the request). Part of the records realm (app.middleware): a records user reads, an
admin switches and teaches (anyone in local mode, as for /slides); switches and jobs are
recorded in the records database, which every instance follows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.errors import NotReady
from app.openapi import link
from app.routes.slides import IMAGE_CSP, UserDep
from app.schemas import (
    MAX_DB_INT,
    ActivationOut,
    AdaptationOut,
    ErrorOut,
    Headline,
    ModelVersionList,
    ModelVersionOut,
    TeachIn,
    TeachJobList,
    TeachJobOut,
)
from app.state import ModelSlot
from app.teaching import Teacher
from app.versions import FIGURE_FILE, ID_PATTERN, REPORT_FILE, Switcher, Version, has_shown_file
from records.store import Activation, TeachJob, recent_activations

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorOut,
        "description": "users are configured and the bearer token is missing or not valid",
    },
    403: {
        "model": ErrorOut,
        "description": "the user's role does not allow it (switching is for admins), or a "
        "proxied request while no users are configured",
    },
    503: {
        "model": ErrorOut,
        "description": "the records database is unavailable or turned off, or the model is "
        "not loaded yet",
    },
}
SWITCH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "an id that cannot name a version folder"},
    404: {"model": ErrorOut, "description": "no model version of that id"},
    409: {
        "model": ErrorOut,
        "description": "RBC_MODELS_DIR is not set, the version is the active one already, or "
        "(roll back) nothing was ever activated",
    },
    422: {
        "model": ErrorOut,
        "description": "the version cannot be served (a file missing or not the one its card "
        "names, a bad card): nothing was changed",
    },
}

_ACTIVATE = "/models/{model_id}/activate"
_ROLL_BACK = link("POST", "/models/rollback", "back to the version active before", {})
LISTED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            "ActivateModel": link(
                "POST", _ACTIVATE, "activate the second version listed",
                {"model_id": "$response.body#/items/1/id"},
            ),
        }
    }
}  # fmt: skip
ACTIVATED_LINKS: dict[int | str, dict[str, Any]] = {200: {"links": {"RollBack": _ROLL_BACK}}}

router = APIRouter(prefix="/models", tags=["models"], responses=ERRORS)
ModelId = Annotated[
    str, Path(pattern=ID_PATTERN, description="the version's id (its folder's name)")
]


def get_switcher(request: Request) -> Switcher:
    switcher: Switcher = request.state.switcher
    return switcher


SwitcherDep = Annotated[Switcher, Depends(get_switcher)]


def get_teacher(request: Request) -> Teacher:
    teacher: Teacher = request.state.teacher
    return teacher


TeacherDep = Annotated[Teacher, Depends(get_teacher)]
TEACH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a name that cannot name a version folder"},
    409: {
        "model": ErrorOut,
        "description": "RBC_MODELS_DIR is not set or teaching is turned off "
        "(RBC_TEACH_ENABLED=false), the name is taken, or a teach job is queued or running",
    },
    503: {
        "model": ErrorOut,
        "description": "the training package (and torch) is not installed here (`scripts/"
        "install.sh --train`), or the records database is unavailable",
    },
}
BAD_QUERY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a limit or job id out of range"}
}
JobId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the teach job's id")]


def _activation_out(a: Activation) -> ActivationOut:
    return ActivationOut(
        id=a.id,
        at=a.at,
        user=a.user,
        action=a.action,
        model_id=a.model_id,
        model_name=a.model_name,
        weights_sha256=a.weights_sha256,
    )


def _version_out(v: Version, slot: ModelSlot) -> ModelVersionOut:
    card, adaptation = v.card, v.adaptation
    return ModelVersionOut(
        id=v.id,
        name=card.name if card else None,
        classes=list(card.classes) if card else [],
        created=card.created if card else None,
        method=card.method if card else None,
        weights_sha256=card.state_sha256 if card else None,
        active=slot.predictor is not None and v.id == slot.model_id,
        error=v.error,
        adaptation=None
        if adaptation is None
        else AdaptationOut(
            base_model=adaptation["base_model"],
            before=Headline(**adaptation["before"]),
            after=Headline(**adaptation["after"]),
            fit_chosen=adaptation["fit_chosen"],
            warnings=adaptation["warnings"],
            figure_url=f"/models/{v.id}/before-after.png"
            if has_shown_file(v, FIGURE_FILE)
            else None,
        ),
        report_url=f"/models/{v.id}/report" if has_shown_file(v, REPORT_FILE) else None,
    )


def _listing(switcher: Switcher) -> ModelVersionList:
    slot = switcher.slot
    if slot.predictor is None and not slot.loaded.is_set():
        raise NotReady("the model is still loading; try again in a few seconds")
    newest = recent_activations(switcher.records.get_store(), limit=1)
    return ModelVersionList(
        items=[_version_out(v, slot) for v in switcher.versions.list()],
        active=slot.model_id if slot.predictor is not None else None,
        switchable=switcher.versions.enabled,
        activation=_activation_out(newest[0]) if newest else None,
    )


@router.get("", response_model=ModelVersionList, responses=LISTED_LINKS)
async def versions(_user: UserDep, switcher: SwitcherDep) -> ModelVersionList:
    """Every model version: RBC_MODEL_DIR (`default`) and each folder of RBC_MODELS_DIR, with
    its card's name, classes, date and weights' sha256, whether this instance serves it, why it
    cannot be served, and for an adapted model its before / after on the laboratory's held-out
    test cells. `activation` is the newest switch, which every instance follows."""
    return await run_in_threadpool(_listing, switcher)


@router.post("/rollback", response_model=ActivationOut, responses=SWITCH_ERRORS)
async def rollback(user: UserDep, switcher: SwitcherDep) -> ActivationOut:
    """Serve again the version that was active before the current activation (admins; the
    default before the first activation). Rolling back twice returns to where you were."""
    return _activation_out(await run_in_threadpool(switcher.rollback, user))


@router.post(
    "/{model_id}/activate",
    response_model=ActivationOut,
    responses={**SWITCH_ERRORS, **ACTIVATED_LINKS},
)
async def activate(model_id: ModelId, user: UserDep, switcher: SwitcherDep) -> ActivationOut:
    """Serve this version from now on (admins): it is loaded and its files' sha256 checked
    first; only then is the activation recorded (who, when, which weights) and the version
    served, here at once and by every other instance on the same database within
    RBC_MODELS_POLL_S. Requests in flight finish on the model they started with. A version
    that fails to load changes nothing."""
    return _activation_out(await run_in_threadpool(switcher.activate, user, model_id))


SHOWN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "an id that cannot name a version folder"},
    404: {"model": ErrorOut, "description": "no model version of that id, or it has no such file"},
}


async def _shown(switcher: Switcher, model_id: str, name: str, media_type: str) -> Response:
    """A file of the version's folder as written, never run by a browser (sandboxed)."""
    data = await run_in_threadpool(switcher.versions.shown_file, model_id, name)
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Security-Policy": IMAGE_CSP, "Content-Disposition": "inline"},
    )


@router.get(
    "/{model_id}/report",
    response_class=Response,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "the report, as written"},
        **SHOWN_ERRORS,
    },
)
async def version_report(model_id: ModelId, _user: UserDep, switcher: SwitcherDep) -> Response:
    """The version's report.md (Markdown): for an adapted model, adapt's before / after table on
    the laboratory's held-out slides and on the base model's own cells; for a trained one, its
    training run. Compare versions by it before activating one."""
    return await _shown(switcher, model_id, REPORT_FILE, "text/markdown; charset=utf-8")


@router.get(
    "/{model_id}/before-after.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the figure, as adapt drew it"},
        **SHOWN_ERRORS,
    },
)
async def version_figure(model_id: ModelId, _user: UserDep, switcher: SwitcherDep) -> Response:
    """An adapted model's figure (PNG): each class's recall on the laboratory's held-out
    slides, before and after."""
    return await _shown(switcher, model_id, FIGURE_FILE, "image/png")


# --- teaching ------------------------------------------------------------------------------------


def _job_out(job: TeachJob) -> TeachJobOut:
    return TeachJobOut(**{name: getattr(job, name) for name in TeachJobOut.model_fields})


def _jobs(teacher: Teacher, limit: int) -> TeachJobList:
    refused = teacher.unavailable()
    return TeachJobList(
        items=[_job_out(j) for j in teacher.jobs(limit)],
        available=refused is None,
        reason=None if refused is None else refused.detail,
    )


@router.post("/teach", status_code=202, response_model=TeachJobOut, responses=TEACH_ERRORS)
async def teach(
    user: UserDep,
    teacher: TeacherDep,
    body: Annotated[TeachIn | None, Body()] = None,
) -> TeachJobOut:
    """Teach the model (admins): queue a job that runs `python -m training adapt` on the
    reviewed cells of the signed-off slides into a new version (a folder of RBC_MODELS_DIR
    named `name`), outside this request; follow it at GET /models/teach/{job_id}. One job at a
    time per database. The new version is not activated: compare it in GET /models, then
    activate it."""
    name = body.name if body is not None else None
    return _job_out(await run_in_threadpool(teacher.request, user, name))


@router.get("/teach", response_model=TeachJobList, responses=BAD_QUERY)
async def taught(
    _user: UserDep,
    teacher: TeacherDep,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs to list")] = 20,
) -> TeachJobList:
    """The teach jobs, newest first (state, stage, progress, the failure's message, the new
    version's id), and whether this service takes teach requests (and why not)."""
    return await run_in_threadpool(_jobs, teacher, limit)


@router.get(
    "/teach/{job_id}",
    response_model=TeachJobOut,
    responses={**BAD_QUERY, 404: {"model": ErrorOut, "description": "no teach job of that id"}},
)
async def teach_job_state(job_id: JobId, _user: UserDep, teacher: TeacherDep) -> TeachJobOut:
    """One teach job: queued, running (stage, progress 0..1, heartbeat), done (the new
    version's id) or failed (why, in adapt's own words)."""
    return _job_out(await run_in_threadpool(teacher.job, job_id))
