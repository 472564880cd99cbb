"""Fixtures and image builders shared by the service tests (imported by tests/test_app_*.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app

READY_TIMEOUT_S = 60


def cell_array(size: tuple[int, int] = (24, 24), seed: int = 0) -> np.ndarray:
    """A pink-background RGB picture with a red disc: something like a synthetic cell."""
    w, h = size
    rng = np.random.default_rng(seed)
    canvas = np.empty((h, w, 3), dtype=np.uint8)
    canvas[:] = (236, 204, 210)
    yy, xx = np.ogrid[:h, :w]
    radius = min(w, h) * (0.25 + 0.1 * (seed % 3))
    colour = [(205, 95, 105), (150, 40, 60), (120, 80, 160)][seed % 3]
    canvas[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= radius**2] = colour
    noise = rng.integers(-6, 7, size=canvas.shape)
    return np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def cell_png(seed: int = 0, size: tuple[int, int] = (24, 24)) -> bytes:
    return encode(Image.fromarray(cell_array(size, seed)))


def make_settings(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model_dir": model_dir, "device": "cpu", "api_token": None}
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient) -> None:
    slot = client.app.state.model_slot  # type: ignore[attr-defined]
    assert slot.loaded.wait(READY_TIMEOUT_S), "the model did not load in time"
    assert slot.predictor is not None, slot.error


@pytest.fixture(scope="session")
def model_dir(trained_run: Path) -> Path:
    return trained_run / "model"


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_dir))) as test_client:
        wait_ready(test_client)
        yield test_client
