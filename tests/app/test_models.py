"""Model versions in the service (app/versions.py, app/routes/models.py): listed, activated,
rolled back, followed by a second instance on the same database, SQLite and PostgreSQL (skipped,
saying why, when no server answers; see tests/records/test_records.py). No mocks: the versions
are copies of the tiny trained model (`model_dir`, tests/conftest.py) with their card renamed;
a damaged copy has one byte of its weights changed."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.modelcard import ModelCard, sha256_file
from records.store import create_user, default_url, open_store
from tests.app.test_inputs import assert_error
from tests.app.test_slides import add, bearer, new_slide, service, settings_for, smear
from tests.records.test_records import PgDatabase

HEADLINE = {
    "accuracy": 0.6,
    "accuracy_weighed": 0.55,
    "macro_f1": 0.6667,
    "unflagged_share": 0.6714,
    "called_normal": 0.2857,
    "abnormal_unflagged": 0.4,
    "abnormal_missed": 0.05,
}


def version(model_dir: Path, folder: Path, name: str) -> Path:
    """A copy of the tiny model named `name` (its card's name)."""
    shutil.copytree(model_dir, folder)
    card = ModelCard.load(folder)
    card.name = name
    card.save(folder)
    return folder


CLINIC_WARNING = "95% of the reviewed cells are normal, so the model learns <b>that</b>"


def build_versions(model_dir: Path, root: Path) -> Path:
    versions = root / "versions"
    versions.mkdir()
    version(model_dir, versions / "lab-a", "lab-a")
    adapted = version(model_dir, versions / "lab-b", "lab-b")
    after = {**HEADLINE, "accuracy": 0.9, "per_class": {}}
    (adapted / "adaptation.json").write_text(
        json.dumps(
            {
                "base_model": {"name": "default", "weights_sha256": "x"},
                "figures": {"lab_test": {"before": {**HEADLINE, "n": 70}, "after": after}},
                "fit": {"chosen": "l2=0.1", "candidates": []},
                "warnings": [CLINIC_WARNING],
            }
        )
    )
    figure = io.BytesIO()
    Image.new("RGB", (40, 20), (30, 120, 200)).save(figure, format="PNG")
    (adapted / "before_after.png").write_bytes(figure.getvalue())
    (adapted / "report.md").write_text("# lab-b\n\n| | before | after |\n|---|---|---|\n")
    damaged = version(model_dir, versions / "damaged", "damaged")
    state = damaged / "model_state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    (versions / "no-card").mkdir()
    version(model_dir, versions / ".lab-c.partial-123", "staging")  # adapt's staging: hidden
    (versions / "notes.txt").write_text("not a version")
    return versions


@pytest.fixture(scope="module")
def versions(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_versions(model_dir, tmp_path_factory.mktemp("models"))


@pytest.fixture
def local(model_dir: Path, versions: Path, tmp_path: Path) -> Iterator[TestClient]:
    with service(settings_for(model_dir, tmp_path, models_dir=versions)) as client:
        yield client


def listed(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get("/models", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def served(client: TestClient) -> str:
    name: str = client.get("/model").json()["name"]
    return name


def test_list_activate_roll_back(local: TestClient, model_dir: Path) -> None:
    body = listed(local)
    items = {v["id"]: v for v in body["items"]}
    assert list(items) == ["default", "damaged", "lab-a", "lab-b", "no-card"]
    assert body["active"] == "default" and body["switchable"] and body["activation"] is None
    sha = sha256_file(model_dir / "model_state.pt")
    default = items["default"]
    assert default["active"] and default["error"] is None and default["weights_sha256"] == sha
    assert default["classes"] == ModelCard.load(model_dir).classes
    assert items["lab-a"]["name"] == "lab-a" and not items["lab-a"]["active"]
    assert items["lab-a"]["adaptation"] is None
    assert items["lab-b"]["adaptation"] == {
        "base_model": "default",
        "before": HEADLINE,
        "after": {**HEADLINE, "accuracy": 0.9},
        "fit_chosen": "l2=0.1",
        "warnings": [CLINIC_WARNING],
        "figure_url": "/models/lab-b/before-after.png",
    }
    assert items["lab-b"]["report_url"] == "/models/lab-b/report"
    assert "no model card" in items["no-card"]["error"] and items["no-card"]["name"] is None
    assert items["damaged"]["error"] is None  # listed from its card; refused when activated

    # A damaged copy is refused and nothing changes.
    damaged = local.post("/models/damaged/activate")
    assert_error(damaged, 422)
    assert "sha256" in damaged.json()["detail"] and "refusing" in damaged.json()["detail"]
    assert_error(local.post("/models/no-card/activate"), 422)
    assert listed(local)["active"] == "default" and listed(local)["activation"] is None
    assert served(local) == ModelCard.load(model_dir).name
    # Ids are folder names, exactly: nothing else is read.
    for bad in ("lab", "LAB-A", "lab-a.", "notes.txt", ".lab-c.partial-123", "..%2Fversions"):
        assert local.post(f"/models/{bad}/activate").status_code in (400, 404), bad
    assert_error(local.post("/models/default/activate"), 409)  # the active one already
    assert_error(local.post("/models/rollback"), 409)  # nothing activated yet

    # Activate: the answer comes after the row is committed, and the service serves it.
    slide_id = new_slide(local)
    response = local.post("/models/lab-a/activate")
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["model_id"] == "lab-a" and done["model_name"] == "lab-a"
    assert done["weights_sha256"] == sha and done["user"] == "local"
    assert done["action"] == "activate"
    assert served(local) == "lab-a"
    now = listed(local)
    assert now["active"] == "lab-a" and now["activation"] == done
    assert [v["id"] for v in now["items"] if v["active"]] == ["lab-a"]
    # A field analysed now keeps the new model's name and weights.
    field = add(local, slide_id, smear(0)).json()["field"]
    assert field["models"]["classifier"] == {"name": "lab-a", "weights_sha256": sha}

    # Roll back: the version active before (the default), then back again.
    back = local.post("/models/rollback").json()
    assert back["model_id"] == "default" and back["action"] == "rollback"
    assert served(local) == ModelCard.load(model_dir).name
    assert local.post("/models/rollback").json()["model_id"] == "lab-a"
    assert served(local) == "lab-a"
    assert local.post("/models/lab-b/activate").json()["model_id"] == "lab-b"
    assert local.post("/models/rollback").json()["model_id"] == "lab-a"


def test_a_versions_report_and_figure(local: TestClient, versions: Path, model_dir: Path) -> None:
    """What a laboratory compares versions by, served as written: the report (Markdown) and an
    adapted model's figure (PNG); nothing else of the folder, no link, no other folder."""
    items = {v["id"]: v for v in listed(local)["items"]}
    figure = local.get(items["lab-b"]["adaptation"]["figure_url"])
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert figure.content == (versions / "lab-b" / "before_after.png").read_bytes()
    assert Image.open(io.BytesIO(figure.content)).size == (40, 20)
    report = local.get(items["lab-b"]["report_url"])
    assert report.status_code == 200
    assert report.headers["content-type"] == "text/markdown; charset=utf-8"
    assert report.text.startswith("# lab-b")
    assert "sandbox" in report.headers["content-security-policy"]
    # The tiny model's export has no report (a run's is copied by export-to-models): none shown.
    assert not (model_dir / "report.md").exists()
    assert items["default"]["report_url"] is None
    assert_error(local.get("/models/default/report"), 404)
    assert items["lab-a"]["adaptation"] is None
    assert_error(local.get("/models/lab-a/before-after.png"), 404)
    assert_error(local.get("/models/no-card/report"), 404)
    for bad in ("lab", "notes.txt", ".lab-c.partial-123", "..%2Fversions"):
        assert local.get(f"/models/{bad}/report").status_code in (400, 404), bad
    # A link in a version's folder is not followed.
    linked = versions / "lab-a" / "before_after.png"
    linked.symlink_to(versions / "lab-b" / "before_after.png")
    try:
        assert_error(local.get("/models/lab-a/before-after.png"), 404)
    finally:
        linked.unlink()


def test_without_the_setting(model_dir: Path, tmp_path: Path) -> None:
    with service(settings_for(model_dir, tmp_path)) as client:
        body = listed(client)
        assert [v["id"] for v in body["items"]] == ["default"]
        assert body["items"][0]["active"] and not body["switchable"]
        for path in ("/models/default/activate", "/models/rollback"):
            refused = client.post(path)
            assert_error(refused, 409)
            assert "RBC_MODELS_DIR" in refused.json()["detail"]


def test_only_admins_switch(model_dir: Path, versions: Path, tmp_path: Path) -> None:
    with open_store(default_url(tmp_path), create_dirs=True) as store:
        store.upgrade()
        tokens = {role: create_user(store, name, role)[1] for name, role in (
            ("rae", "reviewer"), ("vic", "viewer"), ("ada", "admin"))}  # fmt: skip
    with service(settings_for(model_dir, tmp_path, models_dir=versions)) as client:
        assert_error(client.get("/models"), 401)
        assert_error(client.get("/models/lab-b/report"), 401)
        viewer = bearer(tokens["viewer"])
        assert client.get("/models/lab-b/before-after.png", headers=viewer).status_code == 200
        assert listed(client, bearer(tokens["viewer"]))["active"] == "default"
        assert client.get("/models", headers=bearer(tokens["viewer"])).headers["cache-control"] == (
            "no-store"
        )
        for role in ("viewer", "reviewer"):
            assert_error(client.post("/models/lab-a/activate", headers=bearer(tokens[role])), 403)
        assert served(client) != "lab-a"
        done = client.post("/models/lab-a/activate", headers=bearer(tokens["admin"])).json()
        assert done["user"] == "ada" and served(client) == "lab-a"


# --- several instances on one database -----------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    def make() -> str:
        if request.param == "sqlite":
            return default_url(tmp_path)
        pg: PgDatabase = request.getfixturevalue("pg")
        return pg.new_empty()

    return make


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_instances_follow_the_latest_activation(
    model_dir: Path, versions: Path, tmp_path: Path, database: Callable[[], str]
) -> None:
    url = database()
    with open_store(url, create_dirs=True) as store:
        store.upgrade()
    default_name = ModelCard.load(model_dir).name
    settings = settings_for(
        model_dir, tmp_path, database_url=url, models_dir=versions, models_poll_s=0.2
    )
    with service(settings) as one, service(settings) as two:
        assert served(one) == served(two) == default_name
        assert one.post("/models/lab-a/activate").status_code == 200
        wait_for(lambda: served(two) == "lab-a")
        assert listed(two)["active"] == "lab-a"
        rolled = two.post("/models/rollback")
        assert rolled.status_code == 200, rolled.text
        wait_for(lambda: served(one) == default_name)
        assert one.post("/models/lab-b/activate").status_code == 200
        wait_for(lambda: served(two) == "lab-b")
    # A new instance starts on the latest activation.
    with service(settings) as three:
        assert served(three) == "lab-b" and listed(three)["active"] == "lab-b"


def test_a_start_falls_back_when_the_activated_version_changed(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    versions = build_versions(model_dir, tmp_path)
    settings = settings_for(model_dir, tmp_path, models_dir=versions)
    with service(settings) as client:
        assert client.post("/models/lab-a/activate").status_code == 200
    # The folder is replaced by another model under the same name: not served at start.
    state = versions / "lab-a" / "model_state.pt"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    card = ModelCard.load(versions / "lab-a")
    card.state_sha256 = sha256_file(state)
    card.save(versions / "lab-a")
    with caplog.at_level("ERROR"), service(settings) as client:
        assert served(client) == ModelCard.load(model_dir).name
        assert listed(client)["active"] == "default"
    assert "changed since it was activated" in caplog.text


def test_an_adaptation_written_before_warnings_lists_none(tmp_path: Path) -> None:
    """adaptation.json of an earlier adapt has no `warnings` nor weighed accuracy: listed with
    none, not refused."""
    from app.versions import headline

    earlier = {k: v for k, v in HEADLINE.items() if k != "accuracy_weighed"}
    (tmp_path / "adaptation.json").write_text(
        json.dumps(
            {
                "base_model": {"name": "default"},
                "figures": {"lab_test": {"before": earlier, "after": earlier}},
                "fit": {"chosen": "base"},
            }
        )
    )
    listed = headline(tmp_path)
    assert listed is not None and listed["warnings"] == [] and listed["fit_chosen"] == "base"
    assert listed["before"]["accuracy_weighed"] is None
