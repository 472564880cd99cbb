"""The API keeps the contract its OpenAPI document states, under a property-based fuzzer.

schemathesis reads /openapi.json from the real server (`python -m app` on loopback, slides on,
the embedded SQLite database, the tiny trained classifier and the classical segmentation) and
sends what the document allows and what it forbids: every operation through its examples,
boundary values (coverage) and random inputs (fuzzing), then chains of calls along the
document's links (stateful: a slide created, a field added, its cells reviewed, the slide signed
off, reported, deleted). Every answer is held to every check schemathesis has: no 5xx, only
documented status codes and content types, bodies and headers as the schema says, bad input
refused, good input accepted, deleted things gone. The exceptions a schema cannot state live in
schemathesis.toml at the repository root, which `st run` uses too.

Uploads get real images part of the time (tests/service/contract_hooks.py), so that fields are
analysed and the stateful chains reach real cells, not only 404s. The operations are tested
through schemathesis's pytest integration; the chains of calls through its command line (`st
run --phases stateful`), as a laboratory's integrator would run it: its engine, unlike a plain
Hypothesis state machine, takes in stride that a live server's state differs between replays.
The seed and the number of examples are fixed so the default run stays within a minute or two
on 2 cores; `-m slow` runs every phase with another seed and many more examples.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.service.test_app_fixtures import ROOT, LiveServer, encode, running_server
from tests.synthetic import make_smear

schemathesis = pytest.importorskip("schemathesis")
import tests.service.contract_hooks  # noqa: E402, F401  (registers the hooks)

pytest_plugins = ["tests.service.test_app_fixtures"]

SEED = int(os.environ.get("RBC_FUZZ_SEED", "20261206"))
MAX_EXAMPLES = int(os.environ.get("RBC_FUZZ_EXAMPLES", "12"))
STATEFUL_SCENARIOS = int(os.environ.get("RBC_FUZZ_SCENARIOS", "25"))


def contract_config(seed: int, max_examples: int) -> Any:
    """schemathesis.toml, with this run's seed and size, every check on."""
    data = tomllib.loads((ROOT / "schemathesis.toml").read_text())
    data.update(seed=seed, generation={"max-examples": max_examples}, checks={"enabled": True})
    return schemathesis.Config.from_dict(data)


def seed_slide(server: LiveServer) -> None:
    """Slide 1 with one analysed field, so that boundary ids (1) reach real cells."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        created = client.post("/slides", json={"sample_id": "FUZZ-1"})
        assert created.status_code == 201, created.text
        field = encode(Image.fromarray(make_smear(seed=0)[0]))
        added = client.post(
            f"/slides/{created.json()['id']}/fields", files={"file": ("f.png", field)}
        )
        assert added.status_code == 201, added.text


@pytest.fixture(scope="module")
def contract_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("contract")
    env = {"RBC_DATA_DIR": str(folder / "data"), "RBC_DATABASE_URL": ""}
    with running_server(model_dir, folder / "server.log", **env) as server:
        seed_slide(server)
        yield server


def local_document() -> dict[str, Any]:
    """The document the service serves in local mode (loopback, no users), built in-process at
    collection time (no model is loaded for it); test_the_live_server_serves_it checks that the
    live server serves the same."""
    app = create_app(Settings(detector_dir=Path("none"), database_url=None))
    documents: Any = app.state.openapi_documents
    document: dict[str, Any] = documents.get(slides_token=False)
    return document


def load_schema(seed: int, max_examples: int) -> Any:
    loaded = schemathesis.openapi.from_dict(
        local_document(), config=contract_config(seed, max_examples)
    )
    return loaded


schema = load_schema(SEED, MAX_EXAMPLES)


def test_the_live_server_serves_it(contract_server: LiveServer) -> None:
    served = httpx.get(contract_server.url + "/openapi.json", timeout=30).json()
    assert served == schema.raw_schema


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case: Any, contract_server: LiveServer) -> None:
    case.call_and_validate(base_url=contract_server.url, timeout=120)


def run_cli(server: LiveServer, tmp_path: Path, *options: str) -> None:
    """`st run` against the live server from the repository root (so that it reads
    schemathesis.toml), with the hooks; fails with the fuzzer's own report."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.service.contract_hooks", "NO_COLOR": "1"}
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
        "--checks", "all", "--workers", "1", "--no-color", "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path), *options,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5000:]


def test_call_chains_keep_the_contract(contract_server: LiveServer, tmp_path: Path) -> None:
    run_cli(
        contract_server, tmp_path, "--phases", "stateful", "--seed", str(SEED),
        "--max-examples", str(STATEFUL_SCENARIOS),
    )  # fmt: skip


@pytest.mark.slow
def test_every_phase_keeps_the_contract_longer(contract_server: LiveServer, tmp_path: Path) -> None:
    """Every phase, another seed, many more examples (several minutes)."""
    run_cli(
        contract_server, tmp_path, "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", str(SEED + 1), "--max-examples", "150",
    )  # fmt: skip
