"""The API keeps the contract its OpenAPI document states, under a property-based fuzzer.

schemathesis reads /openapi.json from the real server (`python -m app` on loopback, slides on,
the embedded SQLite database, the tiny trained classifier and the classical segmentation) and
sends what the document allows and what it forbids: every operation through its examples,
boundary values (coverage) and random inputs (fuzzing), then chains of calls along the
document's links (stateful: a slide created, a field added, its cells reviewed, the slide signed
off, reported, deleted; model versions listed, one activated, rolled back). Every answer is held
to every check schemathesis has: no 5xx, only documented status codes and content types, bodies
and headers as the schema says, bad input refused, good input accepted, deleted things gone.
The exceptions a schema cannot state live in schemathesis.toml at the repository root, which
`st run` uses too.

Uploads get real images part of the time (tests/app/contract_hooks.py), so that fields are
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
from tests.app.helpers import ROOT, LiveServer, encode, running_server
from tests.app.test_inputs import assert_error
from tests.app.test_models import version as model_version
from tests.synthetic import make_smear

schemathesis = pytest.importorskip("schemathesis")
import tests.app.contract_hooks  # noqa: E402, F401  (registers the hooks)

SEED = int(os.environ.get("RBC_FUZZ_SEED", "20261206"))
MAX_EXAMPLES = int(os.environ.get("RBC_FUZZ_EXAMPLES", "12"))
STATEFUL_SCENARIOS = int(os.environ.get("RBC_FUZZ_SCENARIOS", "40"))


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
    # Two model versions (the default and a renamed copy), so that GET /models's link reaches
    # a version to activate, and a roll back has somewhere to go.
    versions = folder / "versions"
    versions.mkdir()
    model_version(model_dir, versions / "lab-a", "lab-a")
    env = {
        "RBC_DATA_DIR": str(folder / "data"),
        "RBC_DATABASE_URL": "",
        "RBC_MODELS_DIR": str(versions),
        # Teach jobs would run adapt in the background, and the answers of the chains would hang
        # on its timing (202 or 409 "a job is running"): the same seed would take other paths.
        # The teach routes are still fuzzed (409, teaching off); tests/app/test_teach.py runs
        # them for real.
        "RBC_TEACH_ENABLED": "false",
    }
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
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.app.contract_hooks", "NO_COLOR": "1"}
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
    # The chains reached the model versions: a version was activated along GET /models's link.
    versions = httpx.get(contract_server.url + "/models", timeout=30).json()
    assert versions["activation"] is not None, versions


@pytest.mark.slow
def test_every_phase_keeps_the_contract_longer(contract_server: LiveServer, tmp_path: Path) -> None:
    """Every phase, another seed, many more examples (several minutes)."""
    run_cli(
        contract_server, tmp_path, "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", str(SEED + 1), "--max-examples", "150",
    )  # fmt: skip


# --- what the fuzzer found (issue 29), pinned ------------------------------------------------


def refused(response: httpx.Response, status: int = 400) -> None:
    assert_error(response, status)
    assert response.headers["content-type"] == "application/json"


def test_values_the_database_cannot_hold_are_400(client: Any) -> None:
    slide = client.post("/slides", json={"sample_id": "BOUNDS"}).json()
    field = encode(Image.fromarray(make_smear(seed=1)[0]))
    added = client.post(f"/slides/{slide['id']}/fields", files={"file": ("f.png", field)})
    cell = added.json()["cells"][0]
    before = client.get(f"/slides/{slide['id']}").json()
    cell_url = f"/slides/{slide['id']}/cells/{cell['id']}"
    for version in (2**70, 2**31, True, "1", 1.5):
        refused(client.post(f"/slides/{slide['id']}/sign-off", json={"version": version}))
        refused(client.patch(cell_url, json={"version": version}))
    refused(client.post("/slides", json={"sample_id": "a\x00b"}))
    refused(client.post("/slides", json={"sample_id": "a", "microns_per_pixel": True}))
    refused(client.get("/slides", params={"sample_id": "a\x00"}))
    refused(client.patch(cell_url, json={"version": 1, "label": "x" * 65}))
    assert client.get(f"/slides/{slide['id']}").json() == before  # nothing changed
    # An integral number is an integer, as JSON Schema says.
    confirmed = client.patch(cell_url, json={"version": 1.0})
    assert confirmed.status_code == 200 and confirmed.json()["version"] == 2, confirmed.text


def test_answers_without_a_scale_match_their_schema(client: Any) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for model, field in (
        ("CellScale", "microns_per_pixel"),
        ("SmearScale", "microns_per_pixel"),
        ("BatchItem", "filename"),
    ):
        assert field not in schemas[model].get("required", []), model
    answer = client.post(
        "/predict", files={"file": ("c.png", encode(Image.new("RGB", (24, 24), (200, 100, 120))))}
    )
    assert answer.status_code == 200, answer.text
    assert "microns_per_pixel" not in answer.json()["scale"]  # absent, and allowed to be


def test_errors_are_documented_as_json_whatever_the_success_is(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, success in (
        ("/slides/{slide_id}/report", "text/html"),
        ("/slides/{slide_id}/cells.csv", "text/csv"),
        ("/slides/{slide_id}/fields/{field_id}/image", "image/*"),
    ):
        responses = paths[path]["get"]["responses"]
        assert list(responses["200"]["content"]) == [success]
        for status in ("400", "404", "503"):
            assert list(responses[status]["content"]) == ["application/json"], (path, status)
    refused(client.get(f"/slides/{2**31 - 1}/report"), 404)


def test_405_allows_every_method_of_the_path(client: Any) -> None:
    response = client.put("/slides")
    assert response.status_code == 405
    assert sorted(response.headers["Allow"].split(", ")) == ["GET", "POST"]
    single = client.put("/slides/1")
    assert sorted(single.headers["Allow"].split(", ")) == ["DELETE", "GET"]


def test_links_lead_from_a_new_slide_to_its_cells(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    created = paths["/slides"]["post"]["responses"]["201"]["links"]
    assert {"AddField", "ListCells", "SignOff", "Report", "DeleteSlide"} <= set(created)
    assert created["SignOff"]["requestBody"] == {"version": "$response.body#/version"}
    added = paths["/slides/{slide_id}/fields"]["post"]["responses"]["201"]["links"]
    assert added["ReviewCell"]["parameters"]["cell_id"] == "$response.body#/cells/0/id"
    for links in (created, added):
        for link in links.values():
            pointer = link["operationRef"].removeprefix("#/paths/")
            template, method = pointer.rsplit("/", 1)
            assert method in paths[template.replace("~1", "/").replace("~0", "~")], link


def test_every_bound_is_a_json_schema_keyword() -> None:
    """pydantic writes a bound it cannot place as `ge`/`le`, which JSON Schema (and so every
    client and fuzzer) ignores: a slide's scale of 0.0 was "valid" by the document."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            found.extend(f"{where}.{k}" for k in ("ge", "le", "gt", "lt") if k in node)
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(schema.raw_schema, "#")
    assert not found, found
