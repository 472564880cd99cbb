"""Dependencies the routes take: settings, the loaded predictor, the optional bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import NotReady, Unauthorized
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


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.api_token is None:
        return
    if credentials is None:
        raise Unauthorized("this API needs a token: send 'Authorization: Bearer <token>'")
    expected = settings.api_token.get_secret_value().encode()
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("the token is not valid")


def get_detector(slot: SlotDep) -> CellDetector | None:
    return slot.detector


DetectorDep = Annotated[CellDetector | None, Depends(get_detector)]
