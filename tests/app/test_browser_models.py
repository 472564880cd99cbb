"""The Models panel of the Slides tab in real headless Chromium against the real server on
loopback (local mode, RBC_MODELS_DIR with copies of the tiny model): the versions with an adapted
one's before -> after, activate, a damaged version refused in plain words, roll back. Same
browser as tests/app/test_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.helpers import LiveServer, running_server
from tests.app.test_browser import browser  # noqa: F401  (the module's Chromium)
from tests.app.test_browser_slides import HOSTILE
from tests.app.test_models import CLINIC_WARNING, build_versions, version


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("models-page")
    versions = build_versions(model_dir, folder)
    version(model_dir, versions / "hostile", HOSTILE)
    env = {"RBC_DATA_DIR": str(folder / "data"), "RBC_MODELS_DIR": str(versions)}
    with running_server(model_dir, folder / "server.log", **env) as live:
        yield live


def active_row(page: Any) -> str:
    return str(page.get_attribute("#models-table tbody tr.active", "data-model-id"))


def test_models_panel(browser: Any, server: LiveServer) -> None:  # noqa: F811
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server.url + "/")
    page.click("#tab-slides")
    page.wait_for_selector("#models-table tbody tr.active")
    assert active_row(page) == "default"
    ids = page.locator("#models-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.modelId)"
    )
    assert ids == [v["id"] for v in httpx.get(server.url + "/models").json()["items"]]
    adapted = page.locator("#models-table tbody tr[data-model-id='lab-b'] td")
    assert adapted.nth(2).inner_text().splitlines() == [
        "60.0 % \u2192 90.0 %",
        "weighed to the slides: 55.0 % \u2192 55.0 %",
    ]
    assert "adapted from default" in adapted.nth(1).inner_text()
    assert "last layer refitted (l2=0.1)" in adapted.nth(1).inner_text()
    warning = adapted.nth(1).locator(".warning")
    assert warning.inner_text() == "Warning: " + CLINIC_WARNING  # adapt's words, as text
    assert adapted.nth(6).inner_text() == "5.0 % \u2192 5.0 %"  # abnormal cells missed
    hostile = page.locator("#models-table tbody tr[data-model-id='hostile'] td").nth(1)
    assert hostile.inner_text() == HOSTILE  # a card's name stays text
    assert page.is_disabled("#models-rollback")  # nothing activated yet

    # Activate: the page shows what the service now serves.
    page.click("#models-table tbody tr[data-model-id='lab-a'] button.activate")
    page.wait_for_function(
        "() => document.querySelector('#models-table tbody tr.active')?.dataset.modelId === 'lab-a'"
    )
    assert httpx.get(server.url + "/model").json()["name"] == "lab-a"
    assert "Active: lab-a (activate by local" in page.inner_text("#models-status")

    # A damaged copy is refused, says why, and nothing changes.
    page.click("#models-table tbody tr[data-model-id='damaged'] button.activate")
    page.wait_for_selector("#models-status.error")
    assert "sha256" in page.inner_text("#models-status")
    assert active_row(page) == "lab-a"
    assert httpx.get(server.url + "/model").json()["name"] == "lab-a"

    # Compare before activating: lab-b's figure and report, fetched with the page's token.
    page.click("#models-table tbody tr[data-model-id='lab-b'] button.show-figure")
    page.wait_for_function("() => document.querySelector('#models-figure')?.naturalWidth === 40")
    assert "Before / after: lab-b" in page.inner_text("#models-detail")
    page.click("#models-table tbody tr[data-model-id='lab-b'] button.show-report")
    page.wait_for_selector("#models-report")
    assert page.inner_text("#models-report").startswith("# lab-b")
    assert (
        page.locator("#models-table tbody tr[data-model-id='lab-a'] button.show-figure").count()
        == 0
    )

    # Roll back: the default again.
    page.click("#models-rollback")
    page.wait_for_function(
        "() => document.querySelector('#models-table tbody tr.active')?.dataset.modelId "
        "=== 'default'"
    )
    assert httpx.get(server.url + "/models").json()["active"] == "default"
    assert page.evaluate("window.__pwned") is None
    assert not problems, problems
    page.close()


def test_teach_the_model_shows_the_job_and_its_failure(
    browser: Any,  # noqa: F811
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """Teach the model from the page: the job's progress, then adapt's own refusal (a laboratory
    with too few reviewed cells: the real adapt, which refuses within seconds)."""
    from records.store import create_user, open_store
    from tests.lab_records import BASE, lab_database

    data = tmp_path / "data"
    data.mkdir()
    url = lab_database(data / "rbc.sqlite3", slides=1, review_every=3)
    with open_store(url) as store:
        token = create_user(store, "ada", "admin")[1]
    env = {
        "RBC_DATA_DIR": str(data),
        "RBC_MODELS_DIR": str(tmp_path / "versions"),
        "RBC_TEACH_BASE_DIR": str(BASE),
        "RBC_TEACH_POLL_S": "0.5",
    }
    with running_server(model_dir, tmp_path / "server.log", **env) as live:
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(live.url + "/")
        page.click("#tab-slides")
        page.fill("#slides-token", token)
        page.press("#slides-token", "Tab")
        page.wait_for_selector("#models-teach:not([disabled])")
        page.wait_for_function(
            "document.querySelector('#teach-status').textContent.includes('not activated')"
        )
        page.click("#models-teach")
        page.wait_for_selector("#teach-running:not([hidden])")
        assert page.is_disabled("#models-teach")  # one job at a time
        page.wait_for_selector("#teach-status.error", timeout=90_000)
        status = page.inner_text("#teach-status")
        assert "Teaching failed: adapting needs at least 200 reviewed red cells" in status
        assert page.is_hidden("#teach-running") and not page.is_disabled("#models-teach")
        ids = page.locator("#models-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.modelId)"
        )
        assert ids == ["default"]
        assert not problems, problems
        page.close()
