"""The page in real headless Chromium against the real server on loopback.

Needs Debian's chromium (/usr/bin/chromium, or $RBC_CHROMIUM) and the `playwright` package (dev
extras); scripts/test.sh installs both. Without them these tests are skipped, saying why.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.helpers import LiveServer, cell_png

CHROMIUM = os.environ.get("RBC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: no sandbox as root, and nothing that calls out to the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test.sh does)")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live_server.url + "/")
    page.wait_for_selector("#model-status:has-text('ready')")
    yield page
    page.close()
    # No script error and no Content-Security-Policy violation on the way.
    assert not [p for p in problems if "status of 4" not in p], problems


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A new page on the service at `url`, its model ready; the list collects script errors."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#model-status:has-text('ready')")
    return page, problems


def write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_single_cell(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path, "cell.png", cell_png(seed=1))
    page.set_input_files("#file", path)
    page.wait_for_selector("#previews img")
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    expected = httpx.post(
        live_server.url + "/predict", files={"file": ("cell.png", cell_png(seed=1))}
    ).json()
    assert page.text_content("#single-label") == expected["label"]
    bars = page.locator("#single-bars li")
    assert bars.count() == len(expected["probabilities"])
    ranked = sorted(expected["probabilities"], key=expected["probabilities"].__getitem__)[::-1]
    assert bars.first.locator(".name").text_content() == ranked[0]
    assert page.eval_on_selector("#single-heatmap", "img => img.complete && img.naturalWidth") > 0
    review = page.is_visible("#single-review")
    assert review == expected["needs_review"]
    # The test model has no calibration: no familiarity, no warning.
    assert "familiarity" not in expected and page.is_hidden("#single-unfamiliar")


def test_single_cell_scale_and_its_note(page: Any, tmp_path: Path) -> None:
    # Without a scale the page says what the answer rests on; with one, nothing to say.
    page.set_input_files("#file", write(tmp_path, "cell.png", cell_png(seed=1, size=(72, 72))))
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    note = page.locator("#cells-notes")
    assert note.is_visible() and "No scale given" in (note.text_content() or "")
    page.fill("#cells-mpp", "0.19")
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    assert page.is_hidden("#cells-notes")


def batch_table(page: Any) -> dict[str, tuple[int, str]]:
    """The batch table: class -> (cells, percentage as shown)."""
    found = {}
    for row in page.locator("#batch-table tbody tr").all():
        cells = row.locator("td").all_text_contents()
        found[cells[0]] = (int(cells[1]), cells[2])
    return found


def served_download(server: LiveServer, response: Any) -> bytes:
    """What the service answers to the request the page made (Chromium keeps no body of an
    attachment fetched by a script)."""
    request = response.request
    again = httpx.post(
        server.url + request.url.split(server.url, 1)[1], json=request.post_data_json
    )
    assert again.status_code == 200, again.text
    return again.content


def test_batch_gallery_and_csv(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    paths = [write(tmp_path, f"cell{i}.png", cell_png(seed=i)) for i in range(5)]
    paths.append(write(tmp_path, "broken.png", b"not an image at all"))
    page.set_input_files("#file", paths)
    with page.expect_response("**/predict/batch?heatmap=true") as answer:
        page.click("#analyze")
    page.wait_for_selector("#batch:not([hidden])")
    summary = page.text_content("#batch-summary")
    assert summary.startswith("5 of 6 cells classified") and "1 could not be analysed" in summary
    assert "'broken.png' is not an image" in page.text_content("#failed-list")
    groups = page.locator("#gallery .group")
    assert groups.count() >= 1
    assert page.locator("#gallery .thumb").count() == 5
    # The counts are the service's summary, as it sent them.
    served = answer.value.json()["summary"]
    assert batch_table(page) == {
        c: (n, f"{served['percentages'][c]:.1f}") for c, n in served["counts"].items()
    }
    # The CSV is the service's, written from the results the page holds.
    with (
        page.expect_download() as info,
        page.expect_response("**/predict/batch/results.csv") as sent,
    ):
        page.click("#csv")
    assert sent.value.ok and "attachment" in sent.value.headers["content-disposition"]
    assert Path(info.value.path()).read_bytes() == served_download(live_server, sent.value)
    assert "heatmap" not in sent.value.request.post_data  # the page sends no images back
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert [r["filename"] for r in rows] == [Path(p).name for p in paths]
    assert rows[-1]["error"] and not rows[-1]["label"]
    assert all(r["label"] for r in rows[:5])
    # A thumbnail opens that cell's details.
    page.locator("#gallery .thumb").first.click()
    page.wait_for_selector("#single:not([hidden])")


def test_a_batch_sent_in_several_requests_is_summed_by_the_service(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    # The page sends RBC_MAX_FILES files per request; here 2 (its copy of the setting changed),
    # so 5 files go in 3 requests and the service sums their results as one batch.
    page = browser.new_page()
    page.route(
        live_server.url + "/",
        lambda route: route.fulfill(
            response=(fetched := route.fetch()),
            body=re.sub(r'data-max-files="\d+"', 'data-max-files="2"', fetched.text()),
        ),
    )
    page.goto(live_server.url + "/")
    page.wait_for_selector("#model-status:has-text('ready')")
    paths = [write(tmp_path, f"cell{i}.png", cell_png(seed=i)) for i in range(4)]
    paths.append(write(tmp_path, "broken.png", b"not an image at all"))
    page.set_input_files("#file", paths)
    with page.expect_response("**/predict/batch/summary") as answer:
        page.click("#analyze")
    page.wait_for_selector("#batch:not([hidden])")
    served = answer.value.json()
    assert (served["total"], served["classified"], served["failed"]) == (5, 4, 1)
    assert page.text_content("#batch-summary").startswith("4 of 5 cells classified")
    assert batch_table(page) == {
        c: (n, f"{served['percentages'][c]:.1f}") for c, n in served["counts"].items()
    }
    page.close()


def test_error_in_plain_words(page: Any, tmp_path: Path) -> None:
    page.set_input_files("#file", write(tmp_path, "notes.png", b"these are my notes"))
    page.click("#analyze")
    page.wait_for_selector("#error:not([hidden])")
    text = page.text_content("#error")
    assert text.startswith("This file could not be read as an image: 'notes.png' is not an image")
    assert page.is_hidden("#single")


def test_drag_and_drop(page: Any) -> None:
    handle = page.evaluate_handle(
        """async () => {
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = 24;
            const ctx = canvas.getContext('2d');
            ctx.fillStyle = '#ecccd2'; ctx.fillRect(0, 0, 24, 24);
            ctx.fillStyle = '#cd5f69'; ctx.beginPath(); ctx.arc(12, 12, 8, 0, 7); ctx.fill();
            const blob = await new Promise(r => canvas.toBlob(r, 'image/png'));
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
            return dt;
        }"""
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": handle})
    page.wait_for_selector("#previews img[alt='dropped.png']")
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    assert page.text_content("#single-label")


def test_hostile_file_name_stays_text(page: Any, tmp_path: Path) -> None:
    name = "<img src=x onerror=window.__pwned=1>.png"
    folder = tmp_path / "odd"
    folder.mkdir()
    paths = [write(folder, name, cell_png(3)), write(folder, "b.png", cell_png(4))]
    page.set_input_files("#file", paths)
    page.click("#analyze")
    page.wait_for_selector("#batch:not([hidden])")
    assert name in page.text_content("#gallery")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#gallery img[src='x']").count() == 0


def test_review_mark_follows_the_answer(page: Any, tmp_path: Path) -> None:
    # The tiny test model is never confident, so the API's answer is stubbed here to show that a
    # confident cell gets no "needs review" mark (a CSS rule once overrode the hidden attribute).
    answer = {
        "label": "a",
        "confidence": 0.95,
        "probabilities": {"a": 0.95, "b": 0.05},
        "needs_review": False,
        "review_threshold": 0.7,
        "model": {"name": "stub", "architecture": "none", "weights_sha256": "0" * 64},
    }
    page.route(
        "**/predict?heatmap=true",
        lambda route: route.fulfill(status=200, json=answer),
    )
    page.set_input_files("#file", write(tmp_path, "cell.png", cell_png(seed=2)))
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    assert page.text_content("#single-label") == "a"
    assert not page.is_visible("#single-review")


def smear_file(folder: Path) -> tuple[str, int]:
    from PIL import Image

    from tests.synthetic import make_smear

    array, interior, _ = make_smear()
    path = folder / "smear.png"
    Image.fromarray(array).save(path)
    return str(path), len(interior)


def analyse_smear(page: Any, path: str, outcome: str = "#smear-result:not([hidden])") -> None:
    """Give the smear tab a field, press Analyse and wait for the result (or `outcome`)."""
    page.set_input_files("#smear-file", path)
    page.click("#smear-analyze")
    page.wait_for_selector(outcome)


def table_counts(page: Any) -> dict[str, int]:
    rows = page.locator("#smear-table tbody tr")
    return {
        rows.nth(i).get_attribute("data-label"): int(
            rows.nth(i).locator("td").nth(1).text_content()
        )
        for i in range(rows.count())
    }


def test_smear_tab(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    page.click("#tab-smear")
    assert page.is_visible("#panel-smear") and page.is_hidden("#panel-cells")
    path, n_counted = smear_file(tmp_path)
    analyse_smear(page, path)
    summary = page.text_content("#smear-summary")
    assert summary.startswith(f"{n_counted} red cells counted; 1 cut by the edge"), summary
    assert "scale unknown" in page.text_content("#smear-notes")
    assert page.eval_on_selector("#smear-overlay", "img => img.complete && img.naturalWidth") == 320
    counts = table_counts(page)
    assert sum(counts.values()) == n_counted
    assert "ICSH 2015" in page.text_content("#smear-grading")
    # The gallery: every cell, least confident first within each class.
    assert page.locator("#smear-gallery .thumb").count() == n_counted + 1
    for group in page.locator("#smear-gallery .group").all():
        shown = [float(t.split()[0]) for t in group.locator(".thumb .muted").all_text_contents()]
        assert shown == sorted(shown)
    # A cell's details, with its heatmap from /predict.
    first = page.locator("#smear-gallery .thumb").first
    first.click()
    page.wait_for_selector("#smear-cell:not([hidden])")
    page.wait_for_function(
        "() => { const i = document.getElementById('smear-cell-heatmap');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    assert page.locator("#smear-cell-bars li").count() == len(counts)
    # Reclassify it: the service counts and grades again, and the page shows its answer.
    old = page.text_content("#smear-cell-label")
    new = next(c for c in counts if c != old)
    cell_id = first.get_attribute("data-cell-id")
    with page.expect_response("**/analyze/smear/counts") as answer:
        page.select_option("#smear-cell-reclass", new)
    page.wait_for_selector(f"#smear-gallery .group[data-label='{new}'] .thumb.changed")
    sent = answer.value.request.post_data_json
    assert [(c["label"], c["model_label"]) for c in sent["cells"] if str(c["id"]) == cell_id] == [
        (new, old)
    ]
    assert all("crop" not in c for c in sent["cells"])
    served = answer.value.json()
    after = table_counts(page)
    assert after == served["counts"]
    counted = "(edge)" not in page.locator(f".thumb[data-cell-id='{cell_id}']").text_content()
    assert after[new] == counts[new] + counted and after[old] == counts[old] - counted
    grades = page.locator("#smear-table tbody td.grade").all_text_contents()
    labels = [r.get_attribute("data-label") for r in page.locator("#smear-table tbody tr").all()]
    assert dict(zip(labels, grades, strict=True)) == {
        c: served["grades"].get(c, "") for c in labels
    }
    summary = page.text_content("#smear-summary")
    assert summary.startswith(f"{served['cells_counted']} red cells counted")
    assert f"{served['needs_review']} counted cells need review" in summary
    assert "1 reclassified by you" in summary
    # Downloads: the cells as CSV (written by the service, with the change) and the overlay.
    with page.expect_download() as info, page.expect_response("**/analyze/smear/cells.csv") as sent:
        page.click("#smear-csv")
    assert sent.value.ok
    assert Path(info.value.path()).read_bytes() == served_download(live_server, sent.value)
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert len(rows) == n_counted + 1
    changed = [r for r in rows if r["reclassified"] == "true"]
    assert [(r["id"], r["label"], r["model_label"]) for r in changed] == [(cell_id, new, old)]
    with page.expect_download() as info:
        page.click("#smear-png")
    assert Path(info.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smear_tab_keeps_the_class_when_the_counts_fail(page: Any, tmp_path: Path) -> None:
    # The service refuses the counts (a model swapped under the page, say): the cell keeps its
    # class, the counts stay the service's last, and the page says why in plain words.
    page.route(
        "**/analyze/smear/counts",
        lambda route: route.fulfill(
            status=422, json={"detail": "'x' is not a class of the served model"}
        ),
    )
    page.click("#tab-smear")
    path, _ = smear_file(tmp_path)
    analyse_smear(page, path)
    counts = table_counts(page)
    first = page.locator("#smear-gallery .thumb").first
    with page.expect_response("**/predict?heatmap=true"):
        first.click()
    page.wait_for_selector("#smear-cell:not([hidden])")
    old = page.text_content("#smear-cell-label")
    page.select_option("#smear-cell-reclass", next(c for c in counts if c != old))
    page.wait_for_selector("#smear-error:not([hidden])")
    error = page.text_content("#smear-error")
    assert error.startswith("The counts could not be updated") and "not a class" in error
    assert page.text_content("#smear-cell-label") == old
    assert page.input_value("#smear-cell-reclass") == old
    assert table_counts(page) == counts
    assert page.locator("#smear-gallery .thumb.changed").count() == 0


def test_smear_tab_explains_a_blank_image(page: Any, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (255, 255, 255)).save(path)
    page.click("#tab-smear")
    analyse_smear(page, str(path), outcome="#smear-error:not([hidden])")
    assert "uniform" in page.text_content("#smear-error")
    assert page.is_hidden("#smear-result")


DETECTOR = Path(__file__).resolve().parents[2] / "models" / "detector"


@pytest.fixture(scope="module")
def detector_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    from tests.app.helpers import running_server

    if not (DETECTOR / "detector_card.json").is_file():
        pytest.skip("no detector shipped in models/")
    log = tmp_path_factory.mktemp("detector-server") / "server.log"
    with running_server(model_dir, log, RBC_DETECTOR_DIR=str(DETECTOR)) as server:
        yield server


def test_smear_tab_with_the_detector(
    browser: Any, detector_server: LiveServer, tmp_path: Path
) -> None:
    page, problems = open_page(browser, detector_server.url)
    page.click("#tab-smear")
    path, n_counted = smear_file(tmp_path)
    # No scale given: estimated, and the page warns in plain words.
    analyse_smear(page, path)
    summary = page.text_content("#smear-summary")
    assert summary.startswith(f"{n_counted} red cells counted"), summary
    assert "1 white cells (blue boxes)" in summary and "platelets (purple circles)" in summary
    # The white cell has its own gallery row, apart from the red cells.
    row = page.locator("#smear-gallery .group.other[data-kind='white_cells'] .thumb")
    assert row.count() == 1
    assert (
        page.eval_on_selector(
            "#smear-gallery .group.other .thumb img", "img => img.complete && img.naturalWidth"
        )
        == 72
    )
    warning = page.locator("#smear-scale-note")
    assert warning.is_visible() and "estimated from this field's own red cells" in (
        warning.text_content() or ""
    )
    # With the scale given, no warning.
    page.fill("#smear-mpp", "0.19")
    page.click("#smear-analyze")
    page.wait_for_function("() => document.getElementById('smear-scale-note').hidden === true")
    assert page.text_content("#smear-summary").startswith(f"{n_counted} red cells counted")
    assert not page.locator("#smear-focus-note").is_visible()
    # The same field out of focus: the page says so.
    from PIL import Image, ImageFilter

    blurred = tmp_path / "blurred.png"
    Image.open(path).filter(ImageFilter.GaussianBlur(1.0 / 0.19)).save(blurred)
    page.set_input_files("#smear-file", str(blurred))
    page.click("#smear-analyze")
    page.wait_for_function("() => document.getElementById('smear-focus-note').hidden === false")
    assert "out of focus" in (page.text_content("#smear-focus-note") or "")
    page.close()
    assert problems == []


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shipped model with its familiarity thresholds at 0: every cell and field is
    unfamiliar, so the page's warnings must show."""
    from tests.app.helpers import calibrated_copy, running_server

    model = calibrated_copy(
        tmp_path_factory.mktemp("strict") / "model", cell_threshold=0.0, field_threshold=0.0
    )
    log = tmp_path_factory.mktemp("strict-server") / "server.log"
    with running_server(model, log) as server:
        yield server


def test_unfamiliar_cell_and_field_are_warned_about(
    browser: Any, strict_server: LiveServer, tmp_path: Path
) -> None:
    page, problems = open_page(browser, strict_server.url)
    page.set_input_files("#file", write(tmp_path, "cell.png", cell_png(seed=3)))
    page.wait_for_selector("#previews img")
    page.click("#analyze")
    page.wait_for_selector("#single:not([hidden])")
    assert page.is_visible("#single-unfamiliar") and page.is_visible("#single-review")
    page.click("#tab-smear")
    path, _ = smear_file(tmp_path)
    analyse_smear(page, path)
    warning = page.locator("#smear-unfamiliar")
    assert warning.is_visible() and "Review every cell" in (warning.text_content() or "")
    # The field threshold at 0: the cells' signal is among the reasons given.
    assert "unlike the training cells" in (page.text_content("#smear-unfamiliar-why") or "")
    page.close()
    assert not problems, problems
