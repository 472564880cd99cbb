"""Results sent back: the page's cells of a field as a person reclassified them
(POST /analyze/smear/counts, /analyze/smear/cells.csv) and a batch's results
(POST /predict/batch/summary, /predict/batch/results.csv). The server counts, grades and writes
the CSV; the page only shows what it answers."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.schemas import MAX_BATCH_RESULTS
from core.smear.counting import count_labels, grades, percentages
from tests.app.helpers import cell_png, encode, make_settings, wait_ready
from tests.app.test_inputs import assert_error
from tests.synthetic import make_smear

SMEAR_COLUMNS = [
    "id", "x", "y", "x0", "y0", "x1", "y1", "at_border", "counted", "label", "model_label",
    "reclassified", "confidence", "needs_review",
]  # fmt: skip
BATCH_COLUMNS = ["filename", "label", "confidence", "needs_review", "error"]
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def field(client: TestClient) -> dict[str, Any]:
    """A synthetic field's answer, as the page gets it."""
    data = encode(Image.fromarray(make_smear(seed=0)[0]))
    response = client.post("/analyze/smear", files={"file": ("f.png", data)})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def page_cells(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells as the page sends them: the answer's, with the model's class kept apart."""
    keys = ("id", "x", "y", "box", "at_border", "counted", "label", "confidence")
    return [
        {
            **{k: c[k] for k in keys},
            "probabilities": c["probabilities"],
            "needs_review": c["needs_review"],
            "model_label": c["label"],
        }
        for c in answer["cells"]
    ]


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- a field's counts --------------------------------------------------------------------


def test_the_answer_sent_back_counts_as_the_analysis_did(
    client: TestClient, field: dict[str, Any]
) -> None:
    # The answer's cells as they are (crops, familiarity and all) are accepted.
    for cells in (field["cells"], page_cells(field)):
        response = client.post("/analyze/smear/counts", json={"cells": cells})
        assert response.status_code == 200, response.text
        tally = response.json()
        for key in ("counts", "percentages", "grades", "grading", "cells_counted", "needs_review"):
            assert tally[key] == field[key], key
        assert tally["reclassified"] == 0


def test_a_reclassified_cell_moves_the_counts(client: TestClient, field: dict[str, Any]) -> None:
    cells = page_cells(field)
    cell = next(c for c in cells if c["counted"])
    old = cell["label"]
    new = next(k for k in field["counts"] if k != old)
    cell.update(label=new, needs_review=True)
    tally = client.post("/analyze/smear/counts", json={"cells": cells}).json()
    assert tally["counts"][new] == field["counts"][new] + 1
    assert tally["counts"][old] == field["counts"][old] - 1
    assert tally["reclassified"] == 1 and tally["cells_counted"] == field["cells_counted"]
    # A cell the person reclassified has been looked at: it no longer waits for review.
    flagged = sum(c["needs_review"] for c in cells if c["counted"] and c is not cell)
    assert tally["needs_review"] == flagged
    assert sum(tally["percentages"].values()) == pytest.approx(100.0)


def test_grades_are_the_cores(client: TestClient, field: dict[str, Any]) -> None:
    """Made-up cells: every share of a graded class gives the grade core/smear says."""
    classes = list(field["counts"])
    graded = next(iter(field["grading"]["scales"]), None)
    if graded is None:
        pytest.skip("the test model has no graded class")
    other = next(c for c in classes if c != graded)
    for n in (0, 1, 6, 15, 30, 60):
        labels = [graded] * n + [other] * (100 - n)
        cells = [
            {"id": i, "label": label, "counted": True, "needs_review": False}
            for i, label in enumerate(labels)
        ]
        # Cells at the edge are shown, never counted.
        cells.append({"id": 100, "label": graded, "counted": False, "needs_review": True})
        tally = client.post("/analyze/smear/counts", json={"cells": cells}).json()
        shares = percentages(count_labels(labels, classes))
        assert tally["counts"] == count_labels(labels, classes)
        assert tally["percentages"] == pytest.approx(shares)
        assert tally["grades"] == grades(shares)
        assert (tally["cells_counted"], tally["needs_review"]) == (100, 0)


def test_no_cells_count_nothing(client: TestClient) -> None:
    tally = client.post("/analyze/smear/counts", json={"cells": []}).json()
    assert tally["cells_counted"] == 0 and set(tally["counts"].values()) == {0}
    assert set(tally["percentages"].values()) == {0.0}
    text = client.post("/analyze/smear/cells.csv", json={"cells": []}).text
    assert text.split("\r\n")[1:] == [""]  # the header alone
    assert_error(client.post("/analyze/smear/counts", json={}), 400, "'cells' is missing")


@pytest.mark.parametrize("path", ["/analyze/smear/counts", "/analyze/smear/cells.csv"])
def test_a_label_that_is_no_class_is_422(client: TestClient, path: str) -> None:
    classes = client.get("/model").json()["classes"]
    good = {"id": 1, "label": classes[0], "counted": True, "needs_review": False}
    for wrong in (
        {"label": "unicorn"},
        {"model_label": "unicorn"},
        {"probabilities": {classes[0]: 0.5, "unicorn": 0.5}},
    ):
        assert_error(client.post(path, json={"cells": [{**good, **wrong}]}), 422, "'unicorn'")
    assert client.post(path, json={"cells": [good]}).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"label": "x" * 65},
        {"label": "a\x00b"},
        {"label": ""},
        {"counted": "yes"},
        {"needs_review": 1},
        {"id": -1},
        {"id": True},
        {"confidence": 1.5},
        {"box": [1, 2, 3]},
        {"x": "12"},
    ],
)
def test_malformed_cells_are_400(client: TestClient, bad: dict[str, Any]) -> None:
    cell = {"id": 1, "label": "normal", "counted": True, "needs_review": False, **bad}
    assert_error(client.post("/analyze/smear/counts", json={"cells": [cell]}), 400, "cells.0.")


# --- a field's CSV -----------------------------------------------------------------------


def test_the_csv_has_the_pages_columns_and_the_persons_classes(
    client: TestClient, field: dict[str, Any]
) -> None:
    cells = page_cells(field)
    changed = cells[0]
    old = changed["label"]
    changed["label"] = next(k for k in field["counts"] if k != old)
    response = client.post("/analyze/smear/cells.csv", json={"cells": cells})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="smear-cells.csv"'
    assert response.text.startswith(",".join(SMEAR_COLUMNS)) and "\r\n" in response.text
    table = rows(response.text)
    assert list(table[0]) == SMEAR_COLUMNS + [f"p_{c}" for c in field["counts"]]
    assert len(table) == len(cells)
    first = table[0]
    assert (first["label"], first["model_label"], first["reclassified"]) == (
        changed["label"],
        old,
        "true",
    )
    assert all(r["reclassified"] == "false" for r in table[1:])
    source = field["cells"][0]
    assert first["x"] == f"{source['x']:.1f}"
    assert [int(first[k]) for k in ("x0", "y0", "x1", "y1")] == source["box"]
    assert first["confidence"] == f"{source['confidence']:.6f}"
    assert first["counted"] in ("true", "false") and first["needs_review"] in ("true", "false")
    for name, p in source["probabilities"].items():
        assert first[f"p_{name}"] == f"{p:.6f}"


# --- limits and the token ----------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(model_dir: Path) -> Iterator[TestClient]:
    """A service with a token and fields of at most 3 red cells."""
    with TestClient(create_app(make_settings(model_dir, max_smear_cells=3, api_token=TOKEN))) as c:
        wait_ready(c)
        yield c


def test_more_cells_than_a_field_holds_is_413(strict: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    label = strict.get("/model", headers=auth).json()["classes"][0]
    cells = [{"id": i, "label": label, "counted": True, "needs_review": False} for i in range(4)]
    for path in ("/analyze/smear/counts", "/analyze/smear/cells.csv"):
        too_many = strict.post(path, json={"cells": cells}, headers=auth)
        assert_error(too_many, 413, "4 cells sent", "at most 3", "RBC_MAX_SMEAR_CELLS")
        assert strict.post(path, json={"cells": cells[:3]}, headers=auth).status_code == 200
    # The document says so.
    document = strict.get("/openapi.json").json()
    assert document["components"]["schemas"]["SmearCellsIn"]["properties"]["cells"]["maxItems"] == 3


@pytest.mark.parametrize(
    "path",
    [
        "/analyze/smear/counts",
        "/analyze/smear/cells.csv",
        "/predict/batch/summary",
        "/predict/batch/results.csv",
    ],
)
def test_the_token_guards_them(strict: TestClient, path: str) -> None:
    body: dict[str, Any] = {"results": []} if "batch" in path else {"cells": []}
    assert_error(strict.post(path, json=body), 401)
    wrong = strict.post(path, json=body, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401)
    assert strict.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}).is_success


# --- a batch's summary and CSV -----------------------------------------------------------


def batch(client: TestClient, *items: tuple[str, bytes]) -> dict[str, Any]:
    files = [("files", (name, data, "application/octet-stream")) for name, data in items]
    response = client.post("/predict/batch?heatmap=true", files=files)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_batch_results_sent_back(client: TestClient) -> None:
    one = batch(client, ("a.png", cell_png(1)), ("=cmd.png", b"not an image"))
    two = batch(client, ("b.png", cell_png(2)), ("c.png", cell_png(3)))
    # One answer's results, heatmaps and all: the summary it came with.
    summary = client.post("/predict/batch/summary", json={"results": one["results"]})
    assert summary.status_code == 200, summary.text
    assert summary.json() == one["summary"]
    # Two answers together: summed as one batch of four.
    both = client.post("/predict/batch/summary", json={"results": one["results"] + two["results"]})
    total = both.json()
    assert (total["total"], total["classified"], total["failed"]) == (4, 3, 1)
    for name in total["counts"]:
        assert (
            total["counts"][name] == one["summary"]["counts"][name] + two["summary"]["counts"][name]
        )
    assert sum(total["percentages"].values()) == pytest.approx(100.0)
    assert total["needs_review"] == one["summary"]["needs_review"] + two["summary"]["needs_review"]

    response = client.post(
        "/predict/batch/results.csv", json={"results": one["results"] + two["results"]}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="rbc-results.csv"'
    table = rows(response.text)
    classes = list(one["summary"]["counts"])
    assert list(table[0]) == BATCH_COLUMNS + [f"p_{c}" for c in classes]
    # A file name never runs as a formula in a spreadsheet.
    assert [r["filename"] for r in table] == ["a.png", "'=cmd.png", "b.png", "c.png"]
    failed = table[1]
    assert failed["label"] == "" and failed["p_" + classes[0]] == ""
    assert "not an image" in failed["error"]
    good = table[0]
    prediction = one["results"][0]["prediction"]
    assert good["label"] == prediction["label"] and good["error"] == ""
    assert good["confidence"] == f"{prediction['confidence']:.6f}"
    assert good["needs_review"] == ("true" if prediction["needs_review"] else "false")


def test_batch_results_empty_wrong_and_too_many(client: TestClient) -> None:
    summary = client.post("/predict/batch/summary", json={"results": []}).json()
    assert (summary["total"], summary["classified"]) == (0, 0)
    text = client.post("/predict/batch/results.csv", json={"results": []}).text
    assert text.startswith(",".join(BATCH_COLUMNS)) and text.count("\r\n") == 1
    wrong = {"label": "unicorn", "confidence": 0.9, "needs_review": False}
    for path in ("/predict/batch/summary", "/predict/batch/results.csv"):
        sent = client.post(path, json={"results": [{"filename": "a", "prediction": wrong}]})
        assert_error(sent, 422, "'unicorn'")
        too_many = client.post(path, json={"results": [{}] * (MAX_BATCH_RESULTS + 1)})
        assert_error(too_many, 400, "'results' is invalid")
        assert_error(client.post(path, json={"results": [{"filename": "a\x00"}]}), 400)
