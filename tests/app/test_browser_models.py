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
from tests.app.test_models import build_versions, version


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
    assert adapted.nth(2).inner_text() == "60.0 % \u2192 90.0 %"
    assert "adapted from default" in adapted.nth(1).inner_text()
    hostile = page.locator("#models-table tbody tr[data-model-id='hostile'] td").nth(1)
    assert hostile.inner_text() == HOSTILE  # a card's name stays text
    assert page.is_disabled("#models-rollback")  # nothing activated yet

    # Activate: the page shows what the service now serves.
    page.click("#models-table tbody tr[data-model-id='lab-a'] button")
    page.wait_for_function(
        "() => document.querySelector('#models-table tbody tr.active')?.dataset.modelId === 'lab-a'"
    )
    assert httpx.get(server.url + "/model").json()["name"] == "lab-a"
    assert "Active: lab-a (activate by local" in page.inner_text("#models-status")

    # A damaged copy is refused, says why, and nothing changes.
    page.click("#models-table tbody tr[data-model-id='damaged'] button")
    page.wait_for_selector("#models-status.error")
    assert "sha256" in page.inner_text("#models-status")
    assert active_row(page) == "lab-a"
    assert httpx.get(server.url + "/model").json()["name"] == "lab-a"

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
