"""The real server on loopback: concurrency, and the start-up error a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import ROOT, LiveServer, cell_png


def test_sixteen_clients_on_the_real_server(live_server: LiveServer) -> None:
    cells = [cell_png(seed=i, size=(18 + 2 * i, 40 - i)) for i in range(16)]

    def one(i: int) -> dict[str, float]:
        with httpx.Client(base_url=live_server.url, timeout=60) as client:
            response = client.post("/predict", files={"file": (f"{i}.png", cells[i])})
        assert response.status_code == 200, response.text
        probs: dict[str, float] = response.json()["probabilities"]
        return probs

    sequential = [one(i) for i in range(16)]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=16) as pool:
            concurrent = list(pool.map(one, reversed(range(16))))
        for seq, con in zip(sequential, reversed(concurrent), strict=True):
            assert con == pytest.approx(seq, abs=1e-5)
    assert httpx.get(live_server.url + "/healthz").json() == {"status": "ok"}


def test_missing_model_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "RBC_MODEL_DIR": str(tmp_path / "absent"), "RBC_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "cannot serve the model" in err and "does not exist" in err and "RBC_MODEL_DIR" in err
