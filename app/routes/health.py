"""Liveness and readiness: no token, never runs the model."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import PredictorDep
from app.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (the model may still be loading)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"description": "the model is loading or failed to load"}},
)
async def readyz(predictor: PredictorDep) -> Ready:
    """200 once the model is loaded, its sha256 verified against the card, and warmed up."""
    return Ready(status="ready", model=predictor.card.name, load_seconds=predictor.load_seconds)
