"""Dependencies the routes take: settings, the loaded predictor, who is asking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import NotReady, Unauthorized
from app.identity import Identity
from app.state import ModelSlot
from core.classify.predictor import Predictor
from core.detect.learned import CellDetector


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_slot(request: Request) -> ModelSlot:
    slot: ModelSlot = request.state.model_slot
    return slot


SlotDep = Annotated[ModelSlot, Depends(get_slot)]


def get_predictor(slot: SlotDep) -> Predictor:
    if slot.predictor is None:
        if slot.error:
            raise NotReady(f"the model failed to load: {slot.error}")
        raise NotReady("the model is still loading; try again in a few seconds")
    return slot.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]

_bearer = HTTPBearer(auto_error=False, description="only when RBC_API_TOKEN is set")


def get_identity(request: Request) -> Identity:
    """Who is asking, as app.middleware.IdentityGate decided from the headers."""
    identity = getattr(request.state, "identity", None)
    if not isinstance(identity, Identity):  # a defence: the gate guards every protected path
        raise Unauthorized("this API needs a token: send 'Authorization: Bearer <token>'")
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


def require_token(
    identity: IdentityDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The analysis API's security, for the OpenAPI document (HTTPBearer): the gate has checked
    the token already, before the body was read; this only reads who it let through."""
    return identity


def get_detector(slot: SlotDep) -> CellDetector | None:
    return slot.detector


DetectorDep = Annotated[CellDetector | None, Depends(get_detector)]
