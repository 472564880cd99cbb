"""Liveness and readiness: no token, never runs the model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.deps import PredictorDep
from app.records_slot import RecordsSlot
from app.schemas import DatabaseState, ErrorOut, Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (the model may still be loading)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": ErrorOut, "description": "the model is loading or failed to load"}},
)
async def readyz(request: Request, predictor: PredictorDep) -> Ready:
    """200 once the model is loaded, its sha256 verified against the card, and warmed up.
    `database` says whether the records behind /slides are ready, and why not: the single-cell
    API works without them, so a database that fails does not make the service unready."""
    records: RecordsSlot = request.state.records
    status, detail = records.describe()
    return Ready(
        status="ready",
        model=predictor.card.name,
        load_seconds=predictor.load_seconds,
        database=DatabaseState(status=status, detail=detail),
    )
