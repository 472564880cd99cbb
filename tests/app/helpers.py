"""Builders shared by the service tests: images, settings, the real server on loopback (the
fixtures are in conftest.py beside this file; `model_dir`, the tiny trained model, is in
tests/conftest.py)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings

READY_TIMEOUT_S = 90
ROOT = Path(__file__).resolve().parents[2]
# Where services started by the tests keep their records database (RBC_DATA_DIR).
TEST_DATA_DIR = Path(tempfile.mkdtemp(prefix="rbc-test-data-"))


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


def calibrated_copy(dest: Path, source: Path | None = None, **thresholds: float) -> Path:
    """A copy of a calibrated model (default: the shipped one) at `dest`, with some of its
    calibration's numbers replaced (say field_threshold=0.0: every field unfamiliar). Skips the
    test when the source has no calibration."""
    import shutil

    from core.classify.calibration import Calibration

    source = source or ROOT / "models" / "default"
    if Calibration.load(source) is None:
        pytest.skip(f"{source} has no calibration")
    shutil.copytree(source, dest)
    calibration = Calibration.load(dest)
    assert calibration is not None
    for name, value in thresholds.items():
        setattr(calibration, name, value)
    calibration.save(dest)
    return dest


def make_settings(model_dir: Path, **overrides: Any) -> Settings:
    # The classical segmentation unless a test asks for the shipped detector (its own tests).
    values: dict[str, Any] = {
        "model_dir": model_dir,
        "device": "cpu",
        "api_token": None,
        "detector_dir": Path("none"),
        # The records database (slides) in a folder of the test run's, never the repo's data/.
        "data_dir": TEST_DATA_DIR,
    }
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient) -> None:
    slot = client.app.state.model_slot  # type: ignore[attr-defined]
    assert slot.loaded.wait(READY_TIMEOUT_S), "the model did not load in time"
    assert slot.predictor is not None, slot.error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def running_server(
    model_dir: Path, log: Path, command: list[str] | None = None, **env_overrides: str
) -> Iterator[LiveServer]:
    """The service as users run it (`python -m app`, uvicorn; or `command`) on a free loopback
    port, with RBC_* settings from `env_overrides`; stopped on exit."""
    port = free_port()
    env = {
        **os.environ,
        "RBC_MODEL_DIR": str(model_dir),
        "RBC_HOST": "127.0.0.1",
        "RBC_PORT": str(port),
        "RBC_DEVICE": "cpu",
        "RBC_LOG_LEVEL": "warning",
        "RBC_DETECTOR_DIR": "none",
        "RBC_DATA_DIR": str(TEST_DATA_DIR),
        **env_overrides,
    }
    if "RBC_API_TOKEN" not in env_overrides:
        env.pop("RBC_API_TOKEN", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command or [sys.executable, "-m", "app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in time: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield LiveServer(url=url, process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
