"""Many cells per request, and many clients at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.helpers import cell_png, make_settings, wait_ready
from training.classify.learner import load_exported


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_batch_results_in_order_with_summary(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    cells = [(f"c{i}.png", cell_png(seed=i)) for i in range(7)]
    response = client.post("/predict/batch", files=files(*cells))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == list(range(7))
    assert [r["filename"] for r in body["results"]] == [n for n, _ in cells]
    single = [client.post("/predict", files={"file": (n, d, "image/png")}).json() for n, d in cells]
    for item, one in zip(body["results"], single, strict=True):
        assert "error" not in item
        assert item["prediction"]["label"] == one["label"]
        assert item["prediction"]["probabilities"] == pytest.approx(one["probabilities"], 1e-5)
    summary = body["summary"]
    assert summary["total"] == summary["classified"] == 7 and summary["failed"] == 0
    assert list(summary["counts"]) == card.classes
    assert sum(summary["counts"].values()) == 7
    assert sum(summary["percentages"].values()) == pytest.approx(100.0)
    labels = [one["label"] for one in single]
    for name in card.classes:
        assert summary["counts"][name] == labels.count(name)
    assert summary["needs_review"] == sum(one["needs_review"] for one in single)
    assert body["model"]["weights_sha256"] == card.state_sha256  # the file loaded


def test_one_bad_file_does_not_fail_the_others(client: TestClient) -> None:
    response = client.post(
        "/predict/batch",
        files=files(
            ("good1.png", cell_png(1)),
            ("empty.png", b""),
            ("text.png", b"just text"),
            ("good2.png", cell_png(2)),
        ),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert "prediction" in results[0] and "prediction" in results[3]
    assert results[1]["error"] == {"status": 422, "detail": "'empty.png' is empty"}
    assert results[2]["error"]["status"] == 422 and "prediction" not in results[2]
    summary = response.json()["summary"]
    assert (summary["classified"], summary["failed"], summary["total"]) == (2, 2, 4)


def test_all_bad_still_answers(client: TestClient) -> None:
    response = client.post("/predict/batch", files=files(("a", b""), ("b", b"x")))
    assert response.status_code == 200
    summary = response.json()["summary"]
    assert summary["classified"] == 0 and set(summary["percentages"].values()) == {0.0}


def test_batch_with_heatmaps(client: TestClient) -> None:
    response = client.post(
        "/predict/batch?heatmap=true", files=files(("a", cell_png(1)), ("b", cell_png(2)))
    )
    assert all(
        r["prediction"]["heatmap"].startswith("data:image/png;base64,")
        for r in response.json()["results"]
    )


def test_no_files_is_400(client: TestClient) -> None:
    response = client.post("/predict/batch")
    assert response.status_code == 400 and "field 'files'" in response.json()["detail"]


@pytest.fixture(scope="module")
def few_files(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_dir, max_files=3))) as c:
        wait_ready(c)
        yield c


def test_too_many_files_is_413(few_files: TestClient) -> None:
    cells = [(f"{i}.png", cell_png(i)) for i in range(4)]
    response = few_files.post("/predict/batch", files=files(*cells))
    assert response.status_code == 413
    assert response.json() == {"detail": "4 files sent; at most 3 per request"}
    assert few_files.post("/predict/batch", files=files(*cells[:3])).status_code == 200


def test_sixteen_clients_at_once_get_the_sequential_answers(client: TestClient) -> None:
    cells = [cell_png(seed=i, size=(20 + i, 30 - i)) for i in range(16)]

    def one(i: int) -> dict[str, float]:
        response = client.post("/predict", files={"file": (f"{i}.png", cells[i], "image/png")})
        assert response.status_code == 200, response.text
        probs: dict[str, float] = response.json()["probabilities"]
        return probs

    sequential = [one(i) for i in range(16)]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=16) as pool:
            concurrent = list(pool.map(one, range(16)))
        for seq, con in zip(sequential, concurrent, strict=True):
            assert con == pytest.approx(seq, abs=1e-5)
