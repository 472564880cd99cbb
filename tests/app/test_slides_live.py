"""The slides API on the real server (`python -m app`, uvicorn, on loopback): what survives a
restart, and what a server killed with SIGKILL in the middle of a field upload leaves behind.

Each test has its own records database (RBC_DATA_DIR in tmp_path, the embedded SQLite), the
tiny trained classifier and the classical segmentation (RBC_DETECTOR_DIR=none), and synthetic
smear fields (tests/synthetic.py) encoded as PNG. No mocks: the server is a subprocess, and
it is stopped the way an operator or the kernel would stop it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.app.helpers import LiveServer, encode, running_server
from tests.synthetic import make_smear

TIMEOUT_S = 300
KINDS = ("red_cell", "white_cell", "platelet")


def smear_png(seed: int = 0) -> bytes:
    array, _, _ = make_smear(seed=seed)
    return encode(Image.fromarray(array))


def big_smear_png(tiles: tuple[int, int] = (5, 5)) -> bytes:
    """make_smear's 320x240 field tiled into a larger one (1600x1200 by default, under the
    service's 2.1 Mpx limit, about 200 red cells): its analysis takes a moment."""
    rows = [
        np.concatenate([make_smear(seed=r * tiles[0] + c)[0] for c in range(tiles[0])], axis=1)
        for r in range(tiles[1])
    ]
    return encode(Image.fromarray(np.concatenate(rows, axis=0)))


def data_env(data_dir: Path) -> dict[str, str]:
    # The embedded SQLite in data_dir, whatever the environment says about a database.
    return {"RBC_DATA_DIR": str(data_dir), "RBC_DETECTOR_DIR": "none", "RBC_DATABASE_URL": ""}


def client_for(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=TIMEOUT_S)


def add_field(client: httpx.Client, slide_id: int, data: bytes, name: str) -> httpx.Response:
    return client.post(
        f"/slides/{slide_id}/fields", files={"file": (name, data, "application/octet-stream")}
    )


def state(client: httpx.Client, slide_id: int) -> tuple[Any, Any, Any]:
    """The slide, every cell of every kind, and the audit trail, as the API shows them."""
    cells = {}
    for kind in KINDS:
        listing = client.get(f"/slides/{slide_id}/cells", params={"kind": kind, "limit": 1000})
        assert listing.status_code == 200, listing.text
        cells[kind] = listing.json()
    detail = client.get(f"/slides/{slide_id}")
    audit = client.get(f"/slides/{slide_id}/audit")
    assert detail.status_code == 200 and audit.status_code == 200, (detail.text, audit.text)
    return detail.json(), cells, audit.json()


def audit_items(audit: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = audit["items"]
    return items


# --- restart ----------------------------------------------------------------------------------


def test_slide_review_and_audit_survive_a_restart(model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = data_env(data_dir)
    with (
        running_server(model_dir, tmp_path / "first.log", **env) as server,
        client_for(server) as client,
    ):
        created = client.post("/slides", json={"sample_id": "LIVE-1", "notes": "before"})
        assert created.status_code == 201, created.text
        slide_id = created.json()["id"]
        added = add_field(client, slide_id, smear_png(0), "f1.png")
        assert added.status_code == 201, added.text
        cell = next(c for c in added.json()["cells"] if c["counted"])
        classes = client.get(f"/slides/{slide_id}").json()["classes"]
        new_label = next(c for c in classes if c != cell["label"])
        reviewed = client.patch(
            f"/slides/{slide_id}/cells/{cell['id']}", json={"label": new_label, "version": 1}
        )
        assert reviewed.status_code == 200, reviewed.text
        assert (reviewed.json()["final_label"], reviewed.json()["version"]) == (new_label, 2)
        before = state(client, slide_id)
        image = client.get(f"/slides/{slide_id}/fields/{added.json()['field']['id']}/image")
        assert image.status_code == 200
    # The first server is stopped (SIGTERM, as a service manager would) before the second starts.
    assert server.process.poll() is not None

    with (
        running_server(model_dir, tmp_path / "second.log", **env) as server,
        client_for(server) as client,
    ):
        after = state(client, slide_id)
        assert after == before
        detail, cells, audit = after
        assert detail["sample_id"] == "LIVE-1" and detail["notes"] == "before"
        assert detail["field_count"] == 1 and detail["relabelled"] == 1
        kept = next(c for c in cells["red_cell"]["items"] if c["id"] == cell["id"])
        assert (kept["final_label"], kept["label"], kept["version"]) == (new_label, new_label, 2)
        assert kept["proposed_label"] == cell["label"] and kept["reviewed_by"] == "local"
        assert [e["action"] for e in audit_items(audit)] == ["create_slide", "add_field", "relabel"]
        relabel = audit_items(audit)[-1]
        assert relabel["cell_id"] == cell["id"] and relabel["user"] == "local"
        assert (relabel["from_value"], relabel["to_value"]) == (cell["label"], new_label)
        same = client.get(f"/slides/{slide_id}/fields/{added.json()['field']['id']}/image")
        assert same.status_code == 200 and same.content == image.content
        # Still writable after the restart: a stale review is refused, a current one accepted.
        stale = client.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 1})
        assert stale.status_code == 409, stale.text
        confirmed = client.patch(f"/slides/{slide_id}/cells/{cell['id']}", json={"version": 2})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["version"] == 3


# --- SIGKILL during an upload -----------------------------------------------------------------


def wal_stamp(data_dir: Path) -> tuple[int, int] | None:
    try:
        stat = (data_dir / "rbc.sqlite3-wal").stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def fields_committed(data_dir: Path, slide_id: int) -> int:
    """The slide's fields as another reader of the database sees them (committed ones only)."""
    uri = f"file:{data_dir / 'rbc.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        count: int = db.execute(
            "SELECT count(*) FROM fields WHERE slide_id = ?", (slide_id,)
        ).fetchone()[0]
    return count


def kill_during_upload(
    server: LiveServer, slide_id: int, data: bytes, data_dir: Path, when: str, delay_s: float
) -> bool:
    """POST the field, then SIGKILL the server: `delay_s` after the request went out ("delay"),
    as soon as the database's write-ahead log changes ("wal": the store is writing the field),
    or as soon as the field is committed, before the answer is sent ("committed"); for the first
    two, at the latest after `delay_s`. True when the request was still in flight at the kill."""
    outcome: dict[str, Any] = {}

    def upload() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
                outcome["response"] = add_field(client, slide_id, data, "big.png")
        except httpx.TransportError as error:  # the server died under the request
            outcome["error"] = error

    baseline = wal_stamp(data_dir)
    committed = fields_committed(data_dir, slide_id)
    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    # Waiting for the commit has no short limit: the kill must come after it.
    deadline = time.monotonic() + (TIMEOUT_S if when == "committed" else delay_s)
    while time.monotonic() < deadline and thread.is_alive():
        if when == "wal" and wal_stamp(data_dir) != baseline:
            break
        if when == "committed" and fields_committed(data_dir, slide_id) != committed:
            break
        time.sleep(0.01 if when == "delay" else 0.0005)
    in_flight = thread.is_alive()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(30)
    thread.join(TIMEOUT_S)
    assert not thread.is_alive()
    if not in_flight:
        assert outcome["response"].status_code == 201, outcome["response"].text
    return in_flight


def assert_whole(client: httpx.Client, slide_id: int, per_field: dict[str, int]) -> tuple[int, int]:
    """Every field on the slide has all its cells, every cell belongs to a field, and there is
    one add_field audit row per field: (fields, add_field rows)."""
    detail, cells, audit = state(client, slide_id)
    fields = detail["fields"]
    field_ids = {f["id"] for f in fields}
    for f in fields:
        assert f["cells"] == sum(per_field.values()), f
    for kind in KINDS:
        assert cells[kind]["total"] == len(fields) * per_field[kind], (kind, cells[kind]["total"])
        assert {c["field_id"] for c in cells[kind]["items"]} <= field_ids
    added = [e for e in audit_items(audit) if e["action"] == "add_field"]
    assert sorted(int(e["to_value"]) for e in added) == sorted(field_ids)
    assert detail["field_count"] == len(fields)
    return len(fields), len(added)


def test_sigkill_during_a_field_upload_leaves_no_half_field(
    model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = data_env(data_dir)
    big = big_smear_png()
    # A kill early in the analysis, one half-way through it, one as the store writes, and one
    # once the field is committed but before the answer: the last must leave the field whole.
    plans = [("delay", 0.1), ("delay", 0.5), ("wal", 5.0), ("committed", 0.0)]
    in_flight: list[bool] = []
    outcomes: list[int] = []  # fields on the slide after each restart (for the log)

    server_log = tmp_path / "server0.log"
    with running_server(model_dir, server_log, **env) as server, client_for(server) as client:
        reference = client.post("/slides", json={"sample_id": "REF"}).json()["id"]
        started = time.monotonic()
        ref = add_field(client, reference, big, "big.png")
        upload_s = time.monotonic() - started
        assert ref.status_code == 201, ref.text
        per_field = {
            "red_cell": len(ref.json()["cells"]),
            "white_cell": len(ref.json()["white_cells"]),
            "platelet": len(ref.json()["platelets"]),
        }
        assert per_field["red_cell"] >= 150, per_field
        slide_id = client.post("/slides", json={"sample_id": "KILLED"}).json()["id"]
        first, share = plans[0]
        in_flight.append(
            kill_during_upload(server, slide_id, big, data_dir, first, share * upload_s)
        )

    for i, (when, fraction) in enumerate([*plans[1:], (None, 0.0)], start=1):
        with (
            running_server(model_dir, tmp_path / f"server{i}.log", **env) as server,
            client_for(server) as client,
        ):
            fields, _ = assert_whole(client, slide_id, per_field)
            assert fields <= i
            outcomes.append(fields)
            if when is not None:
                in_flight.append(
                    kill_during_upload(server, slide_id, big, data_dir, when, fraction * upload_s)
                )
                continue
            # The database is usable afterwards: a new field goes in whole, the reference
            # slide is untouched.
            after = add_field(client, slide_id, big, "after.png")
            assert after.status_code == 201, after.text
            assert len(after.json()["cells"]) == per_field["red_cell"]
            assert assert_whole(client, slide_id, per_field)[0] == fields + 1
            assert assert_whole(client, reference, per_field)[0] == 1
    print(f"upload {upload_s:.2f} s; kills {plans}: in flight {in_flight}, fields after {outcomes}")
    # Killed after the commit: the field is there, with all its cells (checked above).
    assert outcomes[-1] == outcomes[-2] + 1
    assert any(in_flight), "no kill landed while an upload was in flight"
