"""A laboratory's own labels (RBC_EXTRA_LABELS, issue 27): reviewers may give them beyond the
served model's classes, the slide lists them as classes, and nothing else is let through."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.app.test_slides import add, new_slide, service, settings_for, smear


def test_a_lab_label_is_accepted_listed_and_counted(model_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(model_dir, tmp_path, extra_labels=("sickle_cell", "echinocyte"))
    with service(settings) as client:
        slide_id = new_slide(client)
        added = add(client, slide_id, smear(0))
        assert added.status_code == 201, added.text
        cells = client.get(f"/slides/{slide_id}/cells").json()["items"]
        cell = next(c for c in cells if c["kind"] == "red_cell")
        detail = client.get(f"/slides/{slide_id}").json()
        served = client.get("/model").json()["classes"]
        assert detail["classes"] == [*served, "sickle_cell", "echinocyte"]

        done = client.patch(
            f"/slides/{slide_id}/cells/{cell['id']}",
            json={"version": cell["version"], "label": "sickle_cell"},
        )
        assert done.status_code == 200, done.text
        assert done.json()["final_label"] == "sickle_cell"
        assert client.get(f"/slides/{slide_id}").json()["counts"]["sickle_cell"] == (
            1 if cell["counted"] else 0
        )
        refused = client.patch(
            f"/slides/{slide_id}/cells/{cell['id']}",
            json={"version": done.json()["version"], "label": "elliptocyte"},
        )
        assert refused.status_code == 422, refused.text
        assert "elliptocyte" in refused.text


def test_without_the_setting_a_label_outside_the_model_is_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    with service(settings_for(model_dir, tmp_path)) as client:
        slide_id = new_slide(client)
        assert add(client, slide_id, smear(0)).status_code == 201
        cell = next(
            c
            for c in client.get(f"/slides/{slide_id}/cells").json()["items"]
            if c["kind"] == "red_cell"
        )
        refused = client.patch(
            f"/slides/{slide_id}/cells/{cell['id']}",
            json={"version": cell["version"], "label": "sickle_cell"},
        )
        assert refused.status_code == 422
        assert "sickle_cell" not in client.get(f"/slides/{slide_id}").json()["classes"]


@pytest.mark.parametrize("bad", ["../etc", "", " lead", "a/b", "x" * 101])
def test_a_label_that_cannot_name_a_folder_is_refused_at_start(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="extra label"):
        Settings(model_dir=tmp_path, extra_labels=(bad,))


def test_the_environment_gives_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RBC_EXTRA_LABELS", "sickle_cell, echinocyte,sickle_cell")
    assert Settings(model_dir=tmp_path).extra_labels == ("sickle_cell", "echinocyte")
