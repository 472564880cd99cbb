"""The deployment files agree with the code: no Docker engine runs here, so check what we can."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_uses_the_install_script_and_ships_the_model() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    # The serving install (no extras): no torch, so no CUDA libraries and no wheel index for them.
    assert re.search(r"bash scripts/install\.sh \\$", text, re.M)
    assert "download.pytorch.org" not in text and "find_spec('torch') is None" in text
    assert "COPY models/default/ models/default/" in text
    assert "COPY models/detector/ models/detector/" in text and "verified_detector_path" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/readyz" in text
    for line in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / line).exists() or line.startswith("models/"), line
    # Every RBC_ variable the image sets is a setting.
    for name in re.findall(r"\bRBC_(\w+)=", text):
        assert name.lower() in Settings.model_fields, name


def test_the_serving_install_carries_nothing_only_training_uses() -> None:
    """pyproject's plain dependencies are the service's; torch and the rest are the `train`
    extra's, which `dev` (the tests) includes. serve.sh installs the plain set."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = {re.split(r"[\[=<>]", d)[0].lower() for d in project["dependencies"]}
    training_only = {"torch", "torchvision", "fastai", "pandas", "matplotlib", "scikit-learn"}
    assert not serving & training_only
    train = {re.split(r"[\[=<>]", d)[0].lower() for d in project["optional-dependencies"]["train"]}
    assert training_only <= train
    assert "rbc-morphology[train]" in project["optional-dependencies"]["dev"]
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    assert re.search(r"^bash scripts/install\.sh$", serve, re.M)


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


def test_render_blueprint_database() -> None:
    """The service's RBC_DATABASE_URL comes from the blueprint's managed PostgreSQL, which is not
    a free (expiring) instance and is not open to the internet."""
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    (database,) = blueprint["databases"]
    assert database["plan"] != "free" and database["ipAllowList"] == []
    (url,) = [e for e in service["envVars"] if e["key"] == "RBC_DATABASE_URL"]
    assert url["fromDatabase"] == {"name": database["name"], "property": "connectionString"}
    # The service itself is unchanged: listens where Render routes, checked by /readyz.
    env = {e["key"]: e.get("value") for e in service["envVars"]}
    assert env["RBC_HOST"] == "0.0.0.0" and service["plan"] == "starter"


def test_deployment_docs_name_real_commands() -> None:
    """docs/slides.md's Deployment, Backups and Retention sections, and the records commands
    (with their options) they and the Dockerfile use."""
    from records.__main__ import _parser

    docs = (ROOT / "docs" / "slides.md").read_text()
    for section in ("## Deployment", "## Backups", "## Retention"):
        assert section in docs, section
    assert "exits with status 3" in docs and "pg_dump" in docs and "pg_restore" in docs
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands: dict[str, argparse.ArgumentParser] = dict(sub.choices)
    text = docs + (ROOT / "Dockerfile").read_text()
    for used in re.findall(r"python -m records ([a-z-]+)", text):
        assert used in commands, used
    for option in ("--older-than", "--admin", "--dry-run", "--status"):
        assert option in docs
        assert option in commands["delete-slides"]._option_string_actions, option
    assert "--out" in commands["backup"]._option_string_actions
