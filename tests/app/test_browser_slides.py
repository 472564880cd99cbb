"""The Slides tab in real headless Chromium against the real server on loopback (local mode: no
users, so no token): create a slide, add two fields, review with the keyboard, a stale review,
sign off, reopen, reload; the review queue and accepting the rest of a field. Same browser and
server fixtures as tests/app/test_browser.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.app.helpers import LiveServer
from tests.app.test_browser import browser, page  # noqa: F401  (the module's Chromium and page)
from tests.app.test_slides import INTERIOR

HOSTILE = "<img src=x onerror=window.__pwned=1>"


def smear_files(folder: Path) -> list[str]:
    from PIL import Image

    from tests.synthetic import make_smear

    paths = []
    for seed in (0, 1):
        array, _, _ = make_smear(seed=seed)
        path = folder / f"field{seed + 1}.png"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


def table_counts(page: Any) -> dict[str, int]:  # noqa: F811
    rows = page.locator("#slide-table tbody tr")
    return {
        rows.nth(i).get_attribute("data-label"): int(rows.nth(i).locator("td").nth(1).inner_text())
        for i in range(rows.count())
    }


def test_slide_flow(page: Any, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    api = live_server.url + "/slides"
    sample = HOSTILE + uuid.uuid4().hex[:8]
    page.click("#tab-slides")
    page.fill("#slide-sample", sample)
    page.fill("#slide-mpp", "0.19")
    page.click("#slide-create")
    page.wait_for_selector("#slide-view:not([hidden])")
    assert page.text_content("#slide-title") == sample  # typed text stays text
    slide_id = int(page.evaluate("location.hash").split("=")[1])

    # Two fields, sent one at a time, each with its progress line; plus one that fails.
    paths = smear_files(tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    page.set_input_files("#slide-files", [paths[0], str(bad), paths[1]])
    page.wait_for_function(
        "() => document.querySelectorAll('#slide-progress li.done, #slide-progress li.failed')"
        ".length === 3"
    )
    lines = page.locator("#slide-progress li").all_inner_texts()
    assert lines[0].startswith("field 1 of 3, field1.png: added"), lines
    assert lines[1].startswith("field 2 of 3, notes.png: not added."), lines
    assert "not an image" in lines[1]
    assert lines[2].startswith("field 3 of 3, field2.png: added"), lines
    page.wait_for_function("() => document.querySelectorAll('#slide-fields tbody tr').length === 2")
    # Each field's thumbnail is drawn with its red cells outlined, one box per cell found.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#slide-fields canvas.field-thumb')]"
        ".every((c) => Number(c.dataset.outlines) > 0)"
    )

    detail = httpx.get(f"{api}/{slide_id}").json()
    assert detail["cells_counted"] > 0
    counts = table_counts(page)
    assert counts == {c: detail["counts"].get(c, 0) for c in detail["classes"]}
    assert sum(counts.values()) == detail["cells_counted"]
    assert "at least 500 are needed" in page.inner_text("#slide-warnings")
    # The list shows it too.
    page.click("#slide-back")
    row = page.locator("#slides-table tbody tr", has_text=sample)
    row.wait_for()
    assert row.locator("td").nth(3).inner_text() == str(detail["cells_counted"])
    assert page.evaluate("window.__pwned") is None
    row.locator("button").click()
    page.wait_for_selector("#slide-view:not([hidden])")

    # The gallery: every red cell of the slide, least confident first; the first is selected.
    cells = httpx.get(f"{api}/{slide_id}/cells", params={"limit": 1000}).json()["items"]
    page.wait_for_function(
        f"() => document.querySelectorAll('#review-gallery .thumb').length === {len(cells)}"
    )
    shown = page.locator("#review-gallery .thumb").evaluate_all(
        "ts => ts.map(t => Number(t.dataset.cellId))"
    )
    assert shown == [c["id"] for c in cells]
    # Each class button shows its key.
    classes = detail["classes"]
    assert page.locator("#review-classes button kbd").all_inner_texts()[:2] == ["1", "2"]

    # Select a counted cell and press the digit of another class: the counts follow at once.
    target = next(c for c in cells if c["counted"])
    index = shown.index(target["id"])
    page.locator("#review-gallery .thumb").nth(index).click()
    new = next(c for c in classes if c != target["label"])
    page.keyboard.press(str(classes.index(new) + 1))
    page.wait_for_selector(f"#review-gallery .thumb[data-cell-id='{target['id']}'].changed")
    expected = dict(counts)
    expected[new] += 1
    expected[target["label"]] -= 1
    page.wait_for_function(
        "([label, n]) => { const r = document.querySelector("
        "`#slide-table tbody tr[data-label='${label}'] td:nth-child(2)`);"
        " return r && Number(r.textContent) === n; }",
        arg=[new, expected[new]],
    )
    assert table_counts(page) == expected
    # It persisted, and the selection moved to the next cell.
    stored = {c["id"]: c for c in httpx.get(f"{api}/{slide_id}/cells?limit=1000").json()["items"]}
    assert stored[target["id"]]["final_label"] == new
    assert stored[target["id"]]["version"] == target["version"] + 1
    if index + 1 < len(shown):
        assert page.locator("#review-gallery .thumb.selected").get_attribute("data-cell-id") == str(
            shown[index + 1]
        )
        # Enter confirms the selected cell as it is.
        following = shown[index + 1]
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#review-gallery .thumb[data-cell-id='{following}'].reviewed")
        confirmed = httpx.get(f"{api}/{slide_id}/cells?limit=1000").json()["items"]
        after = next(c for c in confirmed if c["id"] == following)
        assert after["reviewed"] and after["final_label"] == stored[following]["label"]

    # Someone else changes the selected cell: the page's review gets 409, says so, reloads.
    page.locator("#review-gallery .thumb").first.click()
    first = httpx.get(f"{api}/{slide_id}/cells?limit=1000").json()["items"][0]
    assert (
        httpx.patch(
            f"{api}/{slide_id}/cells/{first['id']}", json={"version": first["version"]}
        ).status_code
        == 200
    )
    page.keyboard.press("1")
    page.wait_for_selector(
        "#review-message:has-text('this cell was changed by someone else: reloaded')"
    )

    # Reload: the slide opens again with its review.
    page.reload()
    page.wait_for_selector("#slide-view:not([hidden])")
    page.wait_for_function(
        "([label, n]) => { const r = document.querySelector("
        "`#slide-table tbody tr[data-label='${label}'] td:nth-child(2)`);"
        " return r && Number(r.textContent) === n; }",
        arg=[new, expected[new]],
    )

    # Sign off: the review controls are disabled, and a key changes nothing.
    page.wait_for_selector("#review-gallery .thumb.selected")
    page.click("#slide-signoff")
    page.wait_for_selector("#slide-status.signed_off")
    assert "signed off by local" in page.inner_text("#slide-status")
    assert page.is_disabled("#review-confirm")
    assert page.is_disabled("#slide-signoff")
    assert page.is_disabled("#slide-files")
    buttons = page.locator("#review-classes button")
    assert all(buttons.nth(i).is_disabled() for i in range(buttons.count()))
    assert all(b.is_disabled() for b in page.locator("#slide-fields button.remove").all())
    version = httpx.get(f"{api}/{slide_id}").json()["version"]
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert httpx.get(f"{api}/{slide_id}").json()["version"] == version
    assert page.get_attribute("#slide-report", "href") == f"slides/{slide_id}/report"
    assert page.get_attribute("#slide-csv", "href") == f"slides/{slide_id}/cells.csv"

    # Reopen asks for a reason, then the controls are back.
    page.click("#slide-reopen")
    page.wait_for_selector("#slides-error:has-text('reason')")
    page.fill("#slide-reopen-reason", "a second look")
    page.click("#slide-reopen")
    page.wait_for_selector("#slide-status.open")
    assert page.is_enabled("#review-confirm")
    trail = httpx.get(f"{api}/{slide_id}/audit").json()["items"]
    reopened = [e for e in trail if e["action"] == "reopen"]
    assert reopened and reopened[-1]["detail"]["reason"] == "a second look", trail
    # Remove a field: the counts follow.
    page.locator("#slide-fields tbody tr").nth(1).locator("button.remove").click()
    page.wait_for_function("() => document.querySelectorAll('#slide-fields tbody tr').length === 1")
    left = httpx.get(f"{api}/{slide_id}").json()
    assert len(left["fields"]) == 1
    page.wait_for_function(
        "n => [...document.querySelectorAll('#slide-table tbody td:nth-child(2)')]"
        ".reduce((a, td) => a + Number(td.textContent), 0) === n",
        arg=left["cells_counted"],
    )
    assert page.evaluate("window.__pwned") is None


def gallery_ids(page: Any) -> list[int]:  # noqa: F811
    ids: list[int] = page.locator("#review-gallery .thumb").evaluate_all(
        "ts => ts.map(t => Number(t.dataset.cellId))"
    )
    return ids


def test_accept_the_rest_and_the_review_queue(
    page: Any,  # noqa: F811
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    """The review queue's order on the page is the service's; "Accept the rest" on a field
    confirms its unreviewed cells at once, keeps a review made before, says when the slide
    changed meanwhile, and is disabled once the slide is signed off."""
    api = live_server.url + "/slides"
    slide_id = httpx.post(api, json={"sample_id": "QUEUE-1"}).json()["id"]
    fields = []
    for path in smear_files(tmp_path):
        with open(path, "rb") as f:
            added = httpx.post(f"{api}/{slide_id}/fields", files={"file": (Path(path).name, f)})
        assert added.status_code == 201, added.text
        fields.append(added.json())
    # One cell of the first field reviewed before: relabelled.
    classes = httpx.get(f"{api}/{slide_id}").json()["classes"]
    kept = fields[0]["cells"][0]
    relabel = next(c for c in classes if c != kept["label"])
    httpx.patch(f"{api}/{slide_id}/cells/{kept['id']}", json={"label": relabel, "version": 1})

    page.goto(f"{live_server.url}/#slide={slide_id}")  # a new hash: read at load
    page.reload()
    page.wait_for_selector("#slide-view:not([hidden])")
    page.wait_for_function("() => document.querySelectorAll('#slide-fields tbody tr').length === 2")
    page.select_option("#review-order", "queue")
    queue = httpx.get(f"{api}/{slide_id}/review-queue", params={"limit": 1000}).json()["items"]
    page.wait_for_function(
        f"() => document.querySelectorAll('#review-gallery .thumb').length === {len(queue)}"
    )
    assert gallery_ids(page) == [c["id"] for c in queue]  # the service's order, reviewed ones out
    spots = [c["id"] for c in queue if c["spot_check"]]
    assert spots and page.locator("#review-gallery .thumb.spot").count() == len(spots)
    assert page.is_disabled("#review-label") and page.is_disabled("#review-needs")
    assert "random" in page.inner_text("#review-order-note")

    # Accept the rest of the first field.
    rows = page.locator("#slide-fields tbody tr")
    rows.nth(0).locator("button.accept-rest").click()
    page.wait_for_selector(f"#slide-fields-message:has-text('{INTERIOR} cells accepted')")
    cells = httpx.get(f"{api}/{slide_id}/cells", params={"limit": 1000}).json()["items"]
    first = [c for c in cells if c["field_id"] == fields[0]["field"]["id"]]
    assert all(c["reviewed"] for c in first)
    assert next(c for c in first if c["id"] == kept["id"])["final_label"] == relabel
    assert not any(c["reviewed"] for c in cells if c["field_id"] == fields[1]["field"]["id"])
    left = httpx.get(f"{api}/{slide_id}/review-queue", params={"limit": 1000}).json()["items"]
    page.wait_for_function(
        f"() => document.querySelectorAll('#review-gallery .thumb').length === {len(left)}"
    )
    assert gallery_ids(page) == [c["id"] for c in left]

    # Someone else reviews a cell of the second field: the page's acceptance is refused (409),
    # says so and reads the slide again; a second press then goes through.
    other = fields[1]["cells"][0]
    assert httpx.patch(f"{api}/{slide_id}/cells/{other['id']}", json={"version": 1}).is_success
    version = httpx.get(f"{api}/{slide_id}").json()["version"]
    rows.nth(1).locator("button.accept-rest").click()
    page.wait_for_selector("#slide-fields-message:has-text('the slide changed since it was shown')")
    assert httpx.get(f"{api}/{slide_id}").json()["version"] == version  # nothing changed
    rows.nth(1).locator("button.accept-rest").click()
    page.wait_for_selector(f"#slide-fields-message:has-text('{INTERIOR} cells accepted')")
    page.wait_for_selector("#review-count:has-text('no cells to show')")
    detail = httpx.get(f"{api}/{slide_id}").json()
    assert detail["reviewed"] == detail["red_cells"]

    # Signed off: the buttons are disabled.
    page.click("#slide-signoff")
    page.wait_for_selector("#slide-status.signed_off")
    assert all(b.is_disabled() for b in page.locator("#slide-fields button.accept-rest").all())
    # Back to the confidence order: every red cell, the filters on again.
    page.select_option("#review-order", "confidence")
    page.wait_for_function(
        f"() => document.querySelectorAll('#review-gallery .thumb').length === {len(cells)}"
    )
    assert page.is_enabled("#review-label")


def test_user_token(
    browser: Any,  # noqa: F811
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """With users in the database, the page sends the token typed into the Slides tab (kept in
    sessionStorage) as `Authorization: Bearer`; without it the service's refusal is shown."""
    import subprocess
    import sys

    from tests.app.helpers import ROOT, running_server

    data = tmp_path / "data"
    data.mkdir()
    with running_server(model_dir, tmp_path / "server.log", RBC_DATA_DIR=str(data)) as server:
        made = subprocess.run(
            [sys.executable, "-m", "records", "create-user", "ann", "--role", "reviewer",
             "--database", f"sqlite:///{data}/rbc.sqlite3"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        token = made.stdout.strip().splitlines()[-1]
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.click("#tab-slides")
        page.wait_for_selector("#slides-error:has-text('A valid user token is needed')")
        page.fill("#slides-token", token)
        page.press("#slides-token", "Tab")  # change: kept for the tab, the list reloads
        page.wait_for_selector("#slides-error", state="hidden")
        assert page.evaluate("sessionStorage.getItem('rbc-user-token')") == token
        page.fill("#slide-sample", "S-1")
        page.click("#slide-create")
        page.wait_for_selector("#slide-view:not([hidden])")
        assert page.text_content("#slide-title") == "S-1"
        listed = httpx.get(server.url + "/slides", headers={"Authorization": f"Bearer {token}"})
        assert [s["created_by"] for s in listed.json()["items"]] == ["ann"]
        # The report link fetches with the token and saves the page.
        with page.expect_download() as info:
            page.click("#slide-report")
        assert "S-1" in Path(info.value.path()).read_text()
        page.close()
        assert errors == []
