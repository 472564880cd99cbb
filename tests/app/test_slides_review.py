"""Reviewing fast enough to teach, through the slides API (issue 27): POST
/slides/{id}/fields/{field_id}/accept-proposals and GET /slides/{id}/review-queue, with the real
service (create_app, the tiny trained classifier, the classical segmentation, synthetic smears)
on a temporary SQLite file and on the local PostgreSQL (skipped, saying why, when no server
answers; see tests/records/test_records.py). The store's own tests of both are in
tests/records/test_fast_review.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from records.store import SPOT_CHECK_EVERY, open_store
from tests.app.test_inputs import assert_error
from tests.app.test_slides import INTERIOR, add, new_slide, service, settings_for, smear, snapshot
from tests.records.test_records import PgDatabase


@pytest.fixture(scope="module")
def pg() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest,
    model_dir: Path,
    pg: PgDatabase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    """The service in local mode (no users) on either database."""
    data = tmp_path_factory.mktemp("data")
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["database_url"] = pg.url()
        with open_store(overrides["database_url"]) as store:
            store.upgrade()
    with service(settings_for(model_dir, data, **overrides)) as c:
        yield c


def slide_of_two_fields(client: TestClient) -> tuple[int, list[dict[str, Any]]]:
    slide_id = new_slide(client)
    fields = []
    for seed in (0, 1):
        added = add(client, slide_id, smear(seed), f"f{seed}.png")
        assert added.status_code == 201, added.text
        fields.append(added.json())
    return slide_id, fields


def test_accept_the_rest_of_a_field(client: TestClient) -> None:
    slide_id, fields = slide_of_two_fields(client)
    first, second = fields
    assert len(first["cells"]) == INTERIOR + 1
    url = f"/slides/{slide_id}/fields/{first['field']['id']}/accept-proposals"
    detail = client.get(f"/slides/{slide_id}").json()
    # One cell of the field reviewed first: relabelled.
    cell = first["cells"][0]
    new = next(c for c in detail["classes"] if c != cell["label"])
    relabelled = client.patch(
        f"/slides/{slide_id}/cells/{cell['id']}", json={"label": new, "version": cell["version"]}
    )
    assert relabelled.status_code == 200, relabelled.text

    # The version shown before that review is stale: 409, nothing changes.
    before = snapshot(client, slide_id)
    assert_error(client.post(url, json={"version": detail["version"]}), 409, "changed since")
    for version in (2**31, True, "1", 1.5, None):
        assert_error(client.post(url, json={"version": version}), 400)
    assert_error(client.post(url, json={}), 400)
    assert snapshot(client, slide_id) == before

    current = before[0]["version"]
    done = client.post(url, json={"version": current})
    assert done.status_code == 200, done.text
    body = done.json()
    rest = {c["id"]: c for c in first["cells"][1:]}
    assert body["field_id"] == first["field"]["id"] and body["accepted"] == len(rest)
    assert sorted(c["id"] for c in body["cells"]) == sorted(rest)
    for c in body["cells"]:
        assert c["reviewed"] and c["reviewed_by"] == "local"
        assert c["final_label"] == c["proposed_label"] == rest[c["id"]]["proposed_label"]
        assert c["version"] == rest[c["id"]]["version"] + 1
    assert body["slide"]["version"] == current + 1 and body["slide"]["status"] == "open"
    after = client.get(f"/slides/{slide_id}").json()
    assert after["version"] == body["slide"]["version"]
    assert after["counts"] == before[0]["counts"]  # accepted as proposed: no count moves
    assert after["reviewed"] == before[0]["reviewed"] + len(rest)
    cells = {c["id"]: c for c in client.get(f"/slides/{slide_id}/cells?limit=1000").json()["items"]}
    assert cells[cell["id"]]["final_label"] == new  # the earlier review is kept
    assert not any(cells[c["id"]]["reviewed"] for c in second["cells"])  # the other field's
    trail = client.get(f"/slides/{slide_id}/audit").json()["items"]
    confirmed = [e for e in trail if e["detail"].get("via") == "accept_proposals"]
    assert sorted(e["cell_id"] for e in confirmed) == sorted(rest)
    assert {(e["action"], e["user"]) for e in confirmed} == {("confirm", "local")}
    # Nothing left to accept: 200, nothing changes.
    again = client.post(url, json={"version": after["version"]})
    assert again.status_code == 200, again.text
    assert (again.json()["accepted"], again.json()["cells"]) == (0, [])
    assert client.get(f"/slides/{slide_id}").json() == after

    # 404s: an unknown slide, an unknown field, another slide's field.
    other_slide = new_slide(client)
    version = after["version"]
    for wrong in (
        f"/slides/{2**31 - 1}/fields/{first['field']['id']}/accept-proposals",
        f"/slides/{slide_id}/fields/{2**31 - 1}/accept-proposals",
        f"/slides/{other_slide}/fields/{second['field']['id']}/accept-proposals",
    ):
        assert_error(client.post(wrong, json={"version": version}), 404)
    assert_error(client.post(f"/slides/{slide_id}/fields/0/accept-proposals", json={}), 400)

    # Signed off: 409 until reopened.
    signed = client.post(f"/slides/{slide_id}/sign-off", json={"version": version}).json()
    url2 = f"/slides/{slide_id}/fields/{second['field']['id']}/accept-proposals"
    before = snapshot(client, slide_id)
    assert_error(client.post(url2, json={"version": signed["version"]}), 409, "signed off")
    assert snapshot(client, slide_id) == before
    reopened = client.post(f"/slides/{slide_id}/reopen", json={"reason": "the second field"})
    done = client.post(url2, json={"version": reopened.json()["version"]})
    assert done.status_code == 200 and done.json()["accepted"] == INTERIOR + 1
    assert client.get(f"/slides/{slide_id}").json()["reviewed"] == 2 * (INTERIOR + 1)
    assert client.get(f"/slides/{slide_id}/review-queue").json()["total"] == 0


def test_the_review_queue(client: TestClient) -> None:
    slide_id, fields = slide_of_two_fields(client)
    url = f"/slides/{slide_id}/review-queue"
    queue = client.get(url, params={"limit": 1000}).json()
    items = queue["items"]
    n = 2 * (INTERIOR + 1)
    assert queue["total"] == len(items) == n and (queue["offset"], queue["limit"]) == (0, 1000)
    assert {c["kind"] for c in items} == {"red_cell"} and not any(c["reviewed"] for c in items)
    assert sorted(c["id"] for c in items) == sorted(c["id"] for f in fields for c in f["cells"])
    # Each cell's margin is its top-1 minus top-2 probability; random checks one place in ten.
    for c in items:
        top = sorted(c["probabilities"].values(), reverse=True)
        assert c["margin"] == pytest.approx(top[0] - top[1])
    spots = [i for i, c in enumerate(items) if c["spot_check"]]
    assert len(spots) == math.ceil(n / SPOT_CHECK_EVERY) and spots[0] == SPOT_CHECK_EVERY - 1
    # Within each proposed class, least margin first; every class in the first round.
    main = [c for c in items if not c["spot_check"]]
    classes = {c["proposed_label"] for c in main}
    assert {c["proposed_label"] for c in main[: len(classes)]} == classes
    for label in classes:
        margins = [c["margin"] for c in main if c["proposed_label"] == label]
        assert margins == sorted(margins), label
    # The same on every call; pages of it; the bounds of a page.
    assert client.get(url, params={"limit": 1000}).json() == queue
    page = client.get(url, params={"offset": 3, "limit": 4}).json()
    assert page["items"] == items[3:7] and page["total"] == n
    assert len(client.get(url).json()["items"]) == n  # default limit 200
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        assert_error(client.get(url, params=params), 400)
    assert_error(client.get(f"/slides/{2**31 - 1}/review-queue"), 404)
    # A review takes the cell out of the queue.
    first = items[0]
    reviewed = client.patch(f"/slides/{slide_id}/cells/{first['id']}", json={"version": 1})
    assert reviewed.status_code == 200, reviewed.text
    left = client.get(url, params={"limit": 1000}).json()
    assert left["total"] == n - 1 and first["id"] not in {c["id"] for c in left["items"]}


def test_the_document_leads_to_both(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    accept = paths["/slides/{slide_id}/fields/{field_id}/accept-proposals"]["post"]
    assert accept["requestBody"]["content"]["application/json"]
    assert {"200", "404", "409"} <= set(accept["responses"])
    queue = paths["/slides/{slide_id}/review-queue"]["get"]
    assert {p["name"] for p in queue["parameters"]} == {"slide_id", "offset", "limit"}
    links = paths["/slides/{slide_id}"]["get"]["responses"]["200"]["links"]
    assert links["AcceptProposals"]["requestBody"] == {"version": "$response.body#/version"}
    assert "ReviewQueue" in links
    assert "ReviewCell" in queue["responses"]["200"]["links"]
