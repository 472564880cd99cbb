"""The slides API (app/routes/slides.py) on real databases: a temporary SQLite file per module,
and the local PostgreSQL for two service instances with concurrent reviewers (skipped, saying
why, when no server answers; see tests/records/test_records.py for $RBC_TEST_DATABASE_URL).

No mocks: the service is create_app() with the tiny trained classifier and the classical
segmentation, fields are synthetic smears (tests/synthetic.py), and what a refused request must
not change is compared with the database as it was before.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from app.config import Settings
from app.main import create_app
from app.records_slot import LOCAL_USER, StartRefused, is_loopback
from app.routes.slides import CSV_COLUMNS, MIN_CELLS_FOR_GRADING, SUPPORT_STATEMENT
from core.modelcard import ModelCard, sha256_file
from records.store import count_users, create_user, default_url, list_users, open_store
from tests.app.helpers import (
    ROOT,
    calibrated_copy,
    encode,
    free_port,
    make_settings,
    wait_ready,
)
from tests.app.test_inputs import assert_error, png_header_only
from tests.records.test_records import PgDatabase
from tests.synthetic import make_smear

INTERIOR = 7  # red cells away from the edge in make_smear's field; one more touches the edge


def smear(seed: int = 0) -> bytes:
    array, interior, _ = make_smear(seed=seed)
    assert len(interior) == INTERIOR
    return encode(Image.fromarray(array))


def settings_for(model_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    return make_settings(model_dir, data_dir=data_dir, **overrides)


@contextmanager
def service(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_slide(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> int:
    response = client.post("/slides", json={"sample_id": "S-0001", **body}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/slides/{response.json()['id']}"
    slide_id: int = response.json()["id"]
    return slide_id


def add(
    client: TestClient,
    slide_id: int,
    data: bytes,
    name: str = "field.png",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        f"/slides/{slide_id}/fields",
        files={"file": (name, data, "application/octet-stream")},
        headers=headers,
    )


def snapshot(client: TestClient, slide_id: int, headers: dict[str, str] | None = None) -> Any:
    """What a refused request must leave as it was: the slide, its cells and its audit."""
    return (
        client.get(f"/slides/{slide_id}", headers=headers).json(),
        client.get(f"/slides/{slide_id}/cells?limit=1000", headers=headers).json(),
        client.get(f"/slides/{slide_id}/audit", headers=headers).json(),
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def local(model_dir: Path, data_dir: Path) -> Iterator[TestClient]:
    """No users, on loopback: the service acts as the local user."""
    with service(settings_for(model_dir, data_dir)) as client:
        yield client


@pytest.fixture(scope="module")
def state_sha(model_dir: Path) -> str:
    return sha256_file(model_dir / "model_state.pt")


# --- the whole flow ---------------------------------------------------------------------------


def test_full_flow(local: TestClient, model_dir: Path, state_sha: str) -> None:
    slide_id = new_slide(local, notes="first")
    fields = []
    images = [smear(0), smear(1)]
    for i, data in enumerate(images):
        response = add(local, slide_id, data, f"f{i}.png")
        assert response.status_code == 201, response.text
        body = response.json()
        assert len(body["cells"]) == INTERIOR + 1  # one at the edge, not counted
        assert all(c["id"] and c["version"] == 1 and c["kind"] == "red_cell" for c in body["cells"])
        assert sum(c["counted"] for c in body["cells"]) == INTERIOR
        assert body["overlay"] is None
        models = body["field"]["models"]
        # The hash of the weights the service loaded, not export.pkl's.
        assert models["classifier"]["weights_sha256"] == state_sha
        assert state_sha != ModelCard.load(model_dir).weights_sha256
        assert models["detector"] == {"name": "classical", "weights_sha256": None}
        assert body["field"]["ordinal"] == i + 1 and body["field"]["filename"] == f"f{i}.png"
        fields.append(body["field"])

    detail = local.get(f"/slides/{slide_id}").json()
    assert detail["cells_counted"] == 2 * INTERIOR == sum(detail["counts"].values())
    assert detail["red_cells"] == 2 * (INTERIOR + 1) and detail["field_count"] == 2
    assert [f["id"] for f in detail["fields"]] == [f["id"] for f in fields]
    assert detail["version"] == 3 and detail["status"] == "open" and detail["created_by"] == "local"
    assert detail["min_cells_for_grading"] == MIN_CELLS_FOR_GRADING
    assert f"grades rest on {2 * INTERIOR} red cells; at least 500 are needed" in " ".join(
        detail["warnings"]
    )
    assert sum(detail["percentages"].values()) == pytest.approx(100.0)
    assert detail["grading"]["source"].startswith("ICSH")

    # The stored image, as uploaded.
    image = local.get(f"/slides/{slide_id}/fields/{fields[0]['id']}/image")
    assert image.status_code == 200 and image.content == images[0]
    assert image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == "no-store"
    assert "sandbox" in image.headers["content-security-policy"]

    # Cells: least confident first, filters.
    listing = local.get(f"/slides/{slide_id}/cells?limit=1000").json()
    assert listing["total"] == 2 * (INTERIOR + 1) == len(listing["items"])
    confidences = [c["confidence"] for c in listing["items"]]
    assert confidences == sorted(confidences)
    some = listing["items"][0]["label"]
    only = local.get(f"/slides/{slide_id}/cells", params={"label": some}).json()
    assert only["total"] >= 1 and {c["label"] for c in only["items"]} == {some}
    flagged = local.get(f"/slides/{slide_id}/cells", params={"needs_review": "true"}).json()
    assert all(c["needs_review"] and not c["reviewed"] for c in flagged["items"])
    page = local.get(f"/slides/{slide_id}/cells", params={"offset": 3, "limit": 2}).json()
    assert [c["id"] for c in page["items"]] == [c["id"] for c in listing["items"][3:5]]
    assert page["total"] == listing["total"]

    # Relabel: the counts follow.
    cell = next(c for c in listing["items"] if c["counted"])
    classes = detail["classes"]
    new = next(c for c in classes if c != cell["label"])
    reviewed = local.patch(
        f"/slides/{slide_id}/cells/{cell['id']}", json={"label": new, "version": 1}
    )
    assert reviewed.status_code == 200, reviewed.text
    out = reviewed.json()
    assert (out["version"], out["final_label"], out["label"]) == (2, new, new)
    assert out["proposed_label"] == cell["label"] and out["reviewed_by"] == "local"
    after = local.get(f"/slides/{slide_id}").json()
    assert after["counts"][new] == detail["counts"][new] + 1
    assert after["counts"][cell["label"]] == detail["counts"][cell["label"]] - 1
    assert after["relabelled"] == 1 and after["version"] == detail["version"] + 1

    # A stale version: 409, nothing changes.
    before = snapshot(local, slide_id)
    third = next(c for c in classes if c not in (new, cell["label"]))
    stale = local.patch(
        f"/slides/{slide_id}/cells/{cell['id']}", json={"label": third, "version": 1}
    )
    assert_error(stale, 409, "changed since version 1")
    confirm_stale = local.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1})
    assert_error(confirm_stale, 409)
    assert snapshot(local, slide_id) == before
    # A label that is not a class: 422, nothing changes.
    assert_error(
        local.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"label": "x", "version": 2}),
        422,
        "not one of",
    )
    assert snapshot(local, slide_id) == before

    # Sign-off: with a stale slide version, then the current one.
    assert_error(
        local.post(f"/slides/{slide_id}/sign-off", json={"version": detail["version"]}), 409
    )
    signed = local.post(f"/slides/{slide_id}/sign-off", json={"version": after["version"]})
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "signed_off" and signed.json()["signed_off_by"] == "local"
    assert signed.json()["signed_off_at"]

    # Every write is refused now, and changes nothing.
    before = snapshot(local, slide_id)
    other = listing["items"][1]
    refused = [
        local.patch(f"/slides/{slide_id}/cells/{other['id']}", json={"version": 1}),
        local.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"label": third, "version": 2}),
        add(local, slide_id, images[0]),
        local.delete(f"/slides/{slide_id}/fields/{fields[0]['id']}"),
        local.delete(f"/slides/{slide_id}"),
        local.post(f"/slides/{slide_id}/sign-off", json={"version": signed.json()["version"]}),
    ]
    for response in refused:
        assert_error(response, 409, "signed off")
    assert snapshot(local, slide_id) == before

    # Reopen (with a reason), and the slide takes reviews again.
    assert_error(local.post(f"/slides/{slide_id}/reopen", json={"reason": ""}), 400)
    reopened = local.post(f"/slides/{slide_id}/reopen", json={"reason": "cell 3 is a platelet"})
    assert reopened.status_code == 200 and reopened.json()["status"] == "open"
    assert_error(local.post(f"/slides/{slide_id}/reopen", json={"reason": "again"}), 409)
    again = local.patch(f"/slides/{slide_id}/cells/{other['id']}", json={"version": 1})
    assert again.status_code == 200 and again.json()["final_label"] == other["label"]

    trail = local.get(f"/slides/{slide_id}/audit").json()["items"]
    assert [e["action"] for e in trail] == [
        "create_slide",
        "add_field",
        "add_field",
        "relabel",
        "sign_off",
        "reopen",
        "confirm",
    ]
    relabel = trail[3]
    assert (relabel["user"], relabel["cell_id"], relabel["from_value"], relabel["to_value"]) == (
        "local",
        cell["id"],
        cell["label"],
        new,
    )
    assert trail[5]["detail"]["reason"] == "cell 3 is a platelet"

    listed = local.get("/slides", params={"sample_id": "S-0001", "status": "open"}).json()
    assert slide_id in [s["id"] for s in listed["items"]] and listed["total"] >= 1


def test_delete_field_and_a_second_instance(
    local: TestClient, model_dir: Path, data_dir: Path
) -> None:
    slide_id = new_slide(local, sample_id="S-DEL")
    first = add(local, slide_id, smear(2)).json()["field"]
    add(local, slide_id, smear(3))
    assert local.get(f"/slides/{slide_id}").json()["cells_counted"] == 2 * INTERIOR
    assert local.delete(f"/slides/{slide_id}/fields/{first['id']}").status_code == 204
    detail = local.get(f"/slides/{slide_id}").json()
    assert detail["cells_counted"] == INTERIOR and [f["ordinal"] for f in detail["fields"]] == [2]
    assert_error(local.get(f"/slides/{slide_id}/fields/{first['id']}/image"), 404)
    assert_error(local.delete(f"/slides/{slide_id}/fields/{first['id']}"), 404)
    assert_error(local.get("/slides/999999"), 404, "no slide")
    assert_error(local.get("/slides/abc"), 400, "'slide_id'")
    cell = local.get(f"/slides/{slide_id}/cells").json()["items"][0]
    # Another instance on the same database (a restart, or a second process) sees all of it
    # and takes over the review.
    with service(settings_for(model_dir, data_dir)) as second:
        assert second.get(f"/slides/{slide_id}").json() == detail
        done = second.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1})
        assert done.status_code == 200
    assert_error(local.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1}), 409)
    # An admin deletes an open slide: everything under it is gone, its audit trail stays, kept
    # at /audit (issue 29: a deleted resource answers 404, sub-resources included).
    assert local.delete(f"/slides/{slide_id}").status_code == 204
    assert_error(local.get(f"/slides/{slide_id}"), 404)
    assert_error(local.get(f"/slides/{slide_id}/audit"), 404, f"/audit?slide_id={slide_id}")
    kept = local.get("/audit", params={"slide_id": slide_id})
    assert kept.status_code == 200, kept.text
    actions = [e["action"] for e in kept.json()["items"]]
    assert actions[-1] == "delete_slide" and "remove_field" in actions
    assert_error(local.get("/audit", params={"slide_id": 2**31 - 1}), 404, "no slide")


def test_slide_scale_is_used(local: TestClient) -> None:
    slide_id = new_slide(local, microns_per_pixel=0.19)
    body = add(local, slide_id, smear(0)).json()
    assert body["scale"]["known"] is True and body["scale"]["microns_per_pixel"] == 0.19
    assert body["field"]["microns_per_pixel"] == 0.19 and not body["field"]["scale_estimated"]
    # At 4.5 um per pixel the same field is too large: 413, as /analyze/smear says.
    big = new_slide(local, microns_per_pixel=4.5)
    refused = add(local, big, smear(0), "smear.png")
    direct = local.post(
        "/analyze/smear?microns_per_pixel=4.5",
        files={"file": ("smear.png", smear(0), "application/octet-stream")},
    )
    assert refused.status_code == direct.status_code == 413
    assert refused.json() == direct.json()
    assert local.get(f"/slides/{big}").json()["field_count"] == 0


def gif() -> bytes:
    return encode(Image.new("RGB", (64, 48), (200, 100, 120)), "GIF")


BAD_UPLOADS: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "not an image": lambda: b"GIF89a not really",
    "truncated": lambda: smear(0)[:2000],
    "uniform": lambda: encode(Image.new("RGB", (320, 240), (255, 255, 255))),
    "bomb header": lambda: png_header_only(50_000, 50_000),
    "gif": gif,
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_answer_as_analyze_smear_and_store_nothing(
    local: TestClient, case: str
) -> None:
    slide_id = new_slide(local, sample_id=f"S-BAD-{case}")
    before = snapshot(local, slide_id)
    data = BAD_UPLOADS[case]()
    refused = add(local, slide_id, data, "smear.png")
    direct = local.post(
        "/analyze/smear", files={"file": ("smear.png", data, "application/octet-stream")}
    )
    assert 400 <= refused.status_code < 500, refused.text
    assert (refused.status_code, refused.json()) == (direct.status_code, direct.json())
    assert snapshot(local, slide_id) == before


def test_upload_without_a_file_and_unknown_slide(local: TestClient) -> None:
    slide_id = new_slide(local, sample_id="S-NOFILE")
    before = snapshot(local, slide_id)
    missing = local.post(f"/slides/{slide_id}/fields", data={"other": "x"})
    direct = local.post("/analyze/smear", data={"other": "x"})
    assert (missing.status_code, missing.json()) == (direct.status_code, direct.json())
    assert missing.status_code == 400
    assert snapshot(local, slide_id) == before
    assert_error(add(local, 999_999, smear(0)), 404, "no slide")
    assert_error(local.post("/slides", json={"sample_id": ""}), 400, "sample_id")
    assert_error(local.post("/slides", json={"sample_id": "   "}), 422, "sample_id")
    assert_error(local.post("/slides", json={"sample_id": "x", "microns_per_pixel": 9}), 400)
    assert_error(local.get("/slides?status=closed"), 400, "'status'")


# --- exports --------------------------------------------------------------------------------


def test_report_escapes_what_users_type(local: TestClient, state_sha: str) -> None:
    hostile = '<script>alert("x")</script>'
    slide_id = new_slide(local, sample_id=hostile, notes="<b>bold</b> & <i>more</i>")
    add(local, slide_id, smear(0), "<img src=x onerror=alert(1)>.png")
    response = local.get(f"/slides/{slide_id}/report")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;i&gt;more&lt;/i&gt;" in html
    assert SUPPORT_STATEMENT in html and state_sha in html and "classical" in html
    assert "DRAFT" in html and f"{INTERIOR} red cells counted over 1 field" in html
    assert "script-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    version = local.get(f"/slides/{slide_id}").json()["version"]
    local.post(f"/slides/{slide_id}/sign-off", json={"version": version})
    signed = local.get(f"/slides/{slide_id}/report").text
    assert "DRAFT" not in signed and "Signed off by</dt><dd>local" in signed


def test_cells_csv(local: TestClient) -> None:
    slide_id = new_slide(local, sample_id="S-CSV")
    add(local, slide_id, smear(0), "=HYPERLINK(1).png")
    add(local, slide_id, smear(1), "b.png")
    cells = local.get(f"/slides/{slide_id}/cells?limit=1000").json()["items"]
    cell = cells[0]
    label = next(
        c for c in local.get(f"/slides/{slide_id}").json()["classes"] if c != cell["label"]
    )
    local.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"label": label, "version": 1})
    response = local.get(f"/slides/{slide_id}/cells.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert f'filename="slide-{slide_id}-cells.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    detail = local.get(f"/slides/{slide_id}").json()
    assert len(rows) == detail["red_cells"] + detail["white_cells"] + detail["platelets"]
    assert [r["field"] for r in rows] == sorted(r["field"] for r in rows)  # field by field
    assert {r["filename"] for r in rows} == {"'=HYPERLINK(1).png", "b.png"}  # no formula
    row = next(r for r in rows if r["cell_id"] == str(cell["id"]))
    assert (row["proposed_class"], row["final_class"], row["class"]) == (
        cell["label"],
        label,
        label,
    )
    assert row["reviewed_by"] == "local" and row["reviewed_at"] and row["version"] == "2"
    assert float(row["confidence"]) == pytest.approx(cell["confidence"], abs=1e-4)
    assert (row["x0"], row["y0"]) == (str(cell["box"][0]), str(cell["box"][1]))
    unreviewed = next(r for r in rows if r["cell_id"] != str(cell["id"]))
    assert unreviewed["final_class"] == "" and unreviewed["reviewed_by"] == ""


def test_openapi_and_model_hash(local: TestClient, state_sha: str) -> None:
    paths = local.get("/openapi.json").json()["paths"]
    for path in (
        "/slides",
        "/slides/{slide_id}",
        "/slides/{slide_id}/fields",
        "/slides/{slide_id}/fields/{field_id}",
        "/slides/{slide_id}/fields/{field_id}/image",
        "/slides/{slide_id}/cells",
        "/slides/{slide_id}/cells/{cell_id}",
        "/slides/{slide_id}/sign-off",
        "/slides/{slide_id}/reopen",
        "/slides/{slide_id}/audit",
        "/slides/{slide_id}/cells.csv",
        "/slides/{slide_id}/report",
    ):
        assert path in paths, path
    # Local mode: the slides need no token, and the document asks for none.
    assert "security" not in paths["/slides/{slide_id}/cells/{cell_id}"]["patch"]
    # Today's single-cell answers name the weights the service loaded, too.
    cell = encode(Image.new("RGB", (24, 24), (200, 100, 120)))
    model = local.post("/predict", files={"file": ("c.png", cell)}).json()["model"]
    assert model["weights_sha256"] == state_sha and model["weights_file"] == "model_state.pt"
    ready = local.get("/readyz").json()
    assert ready["database"] == {"status": "ready", "detail": None}


# --- who may do what --------------------------------------------------------------------------


def operation(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][path][method]
    return found


def test_local_user_until_users_exist(model_dir: Path, tmp_path: Path) -> None:
    url = default_url(tmp_path)
    with service(settings_for(model_dir, tmp_path)) as client:
        slide_id = new_slide(client)
        assert client.get(f"/slides/{slide_id}").json()["created_by"] == LOCAL_USER
        new_slide(client)  # the implicit user does not count as "users exist"
        with open_store(url) as store:
            assert [(u.name, u.role) for u in list_users(store)] == [(LOCAL_USER, "admin")]
        # A request through a proxy does not get the local user.
        proxied = client.get("/slides", headers={"X-Forwarded-For": "203.0.113.9"})
        assert_error(proxied, 403, "proxy")
        review = ("/slides/{slide_id}/cells/{cell_id}", "patch")
        assert "security" not in operation(client.get("/openapi.json").json(), *review)
        # The first user switches tokens on at once, in the API and in its document.
        with open_store(url) as store:
            _, token = create_user(store, "ann", "admin")
            assert count_users(store) == 2
        assert_error(client.get("/slides"), 401, "Bearer")
        assert client.get("/slides", headers=bearer(token)).json()["total"] == 2
        document = client.get("/openapi.json").json()
        assert operation(document, *review)["security"] == [{"UserToken": []}]
        assert operation(document, "/audit", "get")["security"] == [{"UserToken": []}]


@pytest.fixture(scope="module")
def with_users(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("users")
    with open_store(default_url(data), create_dirs=True) as store:
        store.upgrade()
        tokens = {role: create_user(store, name, role)[1] for name, role in (
            ("rae", "reviewer"), ("vic", "viewer"), ("ada", "admin"))}  # fmt: skip
    settings = settings_for(model_dir, data, api_token="single-cell-secret")
    with service(settings) as client:
        yield client, tokens


def test_tokens_and_roles(with_users: Any) -> None:
    client, tokens = with_users
    reviewer, viewer = bearer(tokens["reviewer"]), bearer(tokens["viewer"])
    missing = client.get("/slides")
    assert_error(missing, 401, "Authorization: Bearer")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/slides", headers=bearer("not-a-token")), 401, "not valid")
    # RBC_API_TOKEN is the single-cell API's; /slides wants a user's.
    assert_error(client.get("/slides", headers=bearer("single-cell-secret")), 401)
    slide_id = new_slide(client, reviewer)
    assert client.get(f"/slides/{slide_id}", headers=viewer).json()["created_by"] == "rae"
    assert add(client, slide_id, smear(0), headers=reviewer).status_code == 201
    cell = client.get(f"/slides/{slide_id}/cells", headers=viewer).json()["items"][0]
    before = snapshot(client, slide_id, viewer)
    # Viewers read only: refused from the headers, before the body.
    patch = client.patch(
        f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1}, headers=viewer
    )
    assert_error(patch, 403, "viewer")
    assert patch.headers["connection"] == "close"
    assert_error(add(client, slide_id, smear(1), headers=viewer), 403)
    assert_error(client.post("/slides", json={"sample_id": "x"}, headers=viewer), 403)
    # Deleting a slide is for admins (the store decides).
    assert_error(client.delete(f"/slides/{slide_id}", headers=reviewer), 403, "may not")
    assert snapshot(client, slide_id, viewer) == before
    done = client.patch(
        f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1}, headers=reviewer
    )
    assert done.status_code == 200 and done.json()["reviewed_by"] == "rae"
    trail = client.get(f"/slides/{slide_id}/audit", headers=viewer).json()["items"]
    assert {e["user"] for e in trail} == {"rae"}
    # The single-cell API keeps its own token, and is not opened by a user's.
    cell_png = encode(Image.new("RGB", (24, 24), (200, 100, 120)))
    assert_error(
        client.post("/predict", files={"file": ("c.png", cell_png)}, headers=reviewer), 401
    )
    ok = client.post(
        "/predict", files={"file": ("c.png", cell_png)}, headers=bearer("single-cell-secret")
    )
    assert ok.status_code == 200
    assert client.delete(f"/slides/{slide_id}", headers=bearer(tokens["admin"])).status_code == 204


def test_loopback_names() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org", ""):
        assert not is_loopback(host), host


def test_non_loopback_needs_users(model_dir: Path, tmp_path: Path, with_users: Any) -> None:
    # With no users the app refuses to start on another address...
    app = create_app(settings_for(model_dir, tmp_path, host="0.0.0.0"))
    with pytest.raises(StartRefused, match="no users"), TestClient(app):
        pass
    # ...and starts once there are users (the database of `with_users`).
    client, tokens = with_users
    data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
    with service(settings_for(model_dir, data_dir, host="0.0.0.0")) as other:
        assert_error(other.get("/slides"), 401)
        assert other.get("/slides", headers=bearer(tokens["viewer"])).status_code == 200


def test_real_server_refuses_a_public_address_without_users(
    model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RBC_MODEL_DIR": str(model_dir),
        "RBC_DETECTOR_DIR": "none",
        "RBC_DEVICE": "cpu",
        "RBC_HOST": "0.0.0.0",
        "RBC_PORT": str(free_port()),
        "RBC_DATA_DIR": str(tmp_path),
        "RBC_LOG_LEVEL": "warning",
    }
    env.pop("RBC_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert "refusing to start: RBC_HOST=0.0.0.0 is not a loopback address" in err
    assert (
        f"python -m records create-user NAME --role admin --database {default_url(tmp_path)}" in err
    )


# --- a database that fails ------------------------------------------------------------------


def test_database_unreachable_keeps_single_cells(model_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(
        model_dir, tmp_path, database_url="postgresql://postgres@127.0.0.1:1/nothing"
    )
    with service(settings) as client:
        refused = client.get("/slides")
        assert_error(refused, 503, "cannot reach database")
        assert refused.headers["cache-control"] == "no-store"
        assert_error(client.post("/slides", json={"sample_id": "x"}), 503, "unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"]["status"] == "unavailable"
        assert "cannot reach database" in ready.json()["database"]["detail"]
        cell = encode(Image.new("RGB", (24, 24), (200, 100, 120)))
        assert client.post("/predict", files={"file": ("c.png", cell)}).status_code == 200


def test_database_that_comes_back(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that could not be opened at start-up is tried again in the background."""
    folder = tmp_path / "not-yet"
    settings = settings_for(model_dir, tmp_path, database_url=default_url(folder))
    with service(settings) as client:
        assert_error(client.get("/slides"), 503, "unavailable")
        folder.mkdir()  # what was missing is fixed
        monkeypatch.setattr("app.records_slot.RETRY_S", 0.0)
        deadline = time.monotonic() + 30
        while (answer := client.get("/slides")).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        assert answer.status_code == 200 and answer.json()["total"] == 0
        assert client.get("/readyz").json()["database"]["status"] == "ready"


def test_failed_upgrade_and_turned_off(model_dir: Path, tmp_path: Path) -> None:
    url = default_url(tmp_path)
    with open_store(url) as store:
        store.upgrade()
        with store.engine.begin() as conn:  # a schema from a newer version of the code
            conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with service(settings_for(model_dir, tmp_path)) as client:
        assert_error(client.get("/slides"), 503, "could not be brought to the current schema")
        assert client.get("/readyz").json()["database"]["status"] == "unavailable"
    with service(settings_for(model_dir, tmp_path, database_url="none")) as client:
        assert_error(client.get("/slides"), 503, "turned off")
        assert client.get("/readyz").json()["database"] == {
            "status": "off",
            "detail": "the slides API is turned off (RBC_DATABASE_URL=none)",
        }


# --- PostgreSQL: two instances, eight reviewers ------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


def test_two_instances_eight_reviewers_on_postgresql(
    model_dir: Path, tmp_path: Path, pg: PgDatabase
) -> None:
    url = pg.url()
    with open_store(url) as store:
        store.upgrade()
        tokens = [create_user(store, f"tech{i}", "reviewer")[1] for i in range(8)]
    settings = settings_for(model_dir, tmp_path, database_url=url)
    with service(settings) as one, service(settings) as two:
        instances = [one, two]
        slide_id = new_slide(one, bearer(tokens[0]))
        for seed in (0, 1):
            assert add(two, slide_id, smear(seed), headers=bearer(tokens[1])).status_code == 201
        cells = one.get(f"/slides/{slide_id}/cells?limit=100", headers=bearer(tokens[0])).json()
        items = cells["items"]
        classes = one.get(f"/slides/{slide_id}", headers=bearer(tokens[0])).json()["classes"]

        def review(i: int, cell: dict[str, Any], version: int) -> httpx.Response:
            label = classes[i % len(classes)]
            return instances[i % 2].patch(
                f"/slides/{slide_id}/cells/{cell['id']}",
                json={"label": label, "version": version},
                headers=bearer(tokens[i]),
            )

        # Eight reviewers on one cell, all with version 1: one wins, seven get 409.
        target = items[0]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda i: review(i, target, 1), range(8)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] + [409] * 7, [a.text for a in answers]
        winner = next(a.json() for a in answers if a.status_code == 200)
        trail = two.get(f"/slides/{slide_id}/audit", headers=bearer(tokens[2])).json()["items"]
        reviews = [e for e in trail if e["cell_id"] == target["id"]]
        assert len(reviews) == 1 and reviews[0]["to_value"] == winner["final_label"]
        assert reviews[0]["user"] == winner["reviewed_by"]

        # Eight reviewers on eight other cells at once: every change is kept.
        before = one.get(f"/slides/{slide_id}", headers=bearer(tokens[0])).json()
        others = items[1:9]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda i: review(i, others[i], 1), range(8)))
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        after = two.get(f"/slides/{slide_id}", headers=bearer(tokens[3])).json()
        assert after["version"] == before["version"] + 8
        assert after["reviewed"] == before["reviewed"] + 8
        now = {
            c["id"]: c
            for c in two.get(
                f"/slides/{slide_id}/cells?limit=100", headers=bearer(tokens[3])
            ).json()["items"]
        }
        for i, cell in enumerate(others):
            assert now[cell["id"]]["final_label"] == classes[i % len(classes)]
            assert now[cell["id"]]["reviewed_by"] == f"tech{i}"
            assert now[cell["id"]]["version"] == 2
        # A stale write across instances changes nothing.
        stale = one.patch(
            f"/slides/{slide_id}/cells/{others[0]['id']}",
            json={"version": 1},
            headers=bearer(tokens[5]),
        )
        assert_error(stale, 409)
        assert two.get(f"/slides/{slide_id}", headers=bearer(tokens[3])).json() == after


def test_an_unfamiliar_field_is_a_slide_warning(tmp_path: Path) -> None:
    """The shipped (calibrated) model with its field threshold at 0: every field is unlike the
    training images, and the slide and its report say which."""
    model = calibrated_copy(tmp_path / "model", field_threshold=0.0)
    with service(settings_for(model, tmp_path / "data")) as client:
        slide_id = new_slide(client)
        assert add(client, slide_id, smear(0)).status_code == 201
        detail = client.get(f"/slides/{slide_id}").json()
        report = client.get(f"/slides/{slide_id}/report").text
    assert any(w.startswith("field 1: unlike the images") for w in detail["warnings"])
    assert "field 1: unlike the images the model learnt from" in report
