"""The deployment files agree with the code: no Docker engine runs here, so check what we can."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_uses_the_install_script_and_ships_the_model() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert "bash scripts/install.sh" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "COPY models/default/ models/default/" in text
    assert "COPY models/detector/ models/detector/" in text and "verified_detector_path" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/readyz" in text
    for line in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / line).exists() or line.startswith("models/"), line
    # Every RBC_ variable the image sets is a setting.
    for name in re.findall(r"\bRBC_(\w+)=", text):
        assert name.lower() in Settings.model_fields, name


def test_render_blueprint() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    assert service["runtime"] == "docker" and service["healthCheckPath"] == "/readyz"
    env = {e["key"]: e.get("value") for e in service["envVars"]}
    assert env["RBC_PORT"] == env["PORT"]
    for key in env:
        if key.startswith("RBC_"):
            assert key[4:].lower() in Settings.model_fields, key


def test_dockerignore_keeps_the_default_model() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!models/default" in lines and "!models/detector" in lines and ".venv" in lines


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "service.md").read_text()
    missing = [n for n in Settings.model_fields if f"`RBC_{n.upper()}`" not in text]
    assert missing == [], f"settings missing from docs/service.md: {missing}"
