"""Teach the model as a job outside the web request (app/teaching.py, records/teaching.py,
POST /models/teach): the real service (TestClient, lifespan and runner thread included) on a real
records database; `python -m training adapt` runs for real, as a child process, on the synthetic
laboratory of tests/lab_records.py (once to `done`, once to `failed`). Where only the claiming,
the heartbeats and the taking back are under test, the child is a small script that writes a
model folder as adapt does (a copy of the tiny trained model), so that these tests stay fast.
PostgreSQL tests are skipped, saying why, when no server answers (tests/records/test_records.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.config import Settings
from app.records_slot import RecordsSlot
from app.teaching import Teacher
from app.versions import Versions
from core.modelcard import ModelCard
from records.store import (
    Store,
    TeachJob,
    beat,
    claim_teach_job,
    create_user,
    default_url,
    finish_teach_job,
    list_users,
    open_store,
    request_teaching,
    take_back_stale,
    teach_job,
)
from tests.app.test_inputs import assert_error
from tests.app.test_models import wait_for
from tests.app.test_slides import bearer, service, settings_for
from tests.lab_records import BASE, lab_database
from tests.records.test_records import PgDatabase

ADAPT_TIMEOUT_S = 400  # adapt on the synthetic laboratory: ~70 s on 2 idle cores

FAKE_ADAPT = """
import json, shutil, sys, time
from datetime import UTC, datetime
from pathlib import Path

out, name, model, sleep_s = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
print(json.dumps({"stage": "pretending", "progress": 0.5}), flush=True)
print("a line for people", flush=True)
time.sleep(sleep_s)
if name.startswith("fail"):
    print("error: adapting needs what this fake lacks", file=sys.stderr)
    sys.exit(2)
staging = out.parent / f".{out.name}.partial-fake"
shutil.copytree(model, staging)
card = json.loads((staging / "model_card.json").read_text())
card["name"] = name
card["created"] = datetime.now(UTC).isoformat(timespec="seconds")
(staging / "model_card.json").write_text(json.dumps(card))
staging.rename(out)
print(json.dumps({"stage": "done", "progress": 1.0}), flush=True)
"""


# --- helpers ------------------------------------------------------------------------------------


def admin_token(url: str, name: str = "ada", role: str = "admin") -> str:
    with open_store(url, create_dirs=True) as store:
        store.upgrade()
        return create_user(store, name, role)[1]


def teach_settings(
    model_dir: Path, data_dir: Path, models_dir: Path | None, **more: Any
) -> Settings:
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "teach_base_dir": BASE,
        "teach_poll_s": 0.2,
        "teach_stale_s": 30.0,
        **more,
    }
    return settings_for(model_dir, data_dir, **values)


def wait_job(
    client: TestClient,
    job_id: int,
    done: Callable[[dict[str, Any]], bool],
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/models/teach/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"the job did not get there in time: {job}"
        time.sleep(0.2)


@pytest.fixture
def fake_adapt(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> Callable[[float], None]:
    """Make the runners run FAKE_ADAPT (sleeping `seconds`) instead of adapt."""
    script = tmp_path / "fake_adapt.py"
    script.write_text(FAKE_ADAPT)

    def use(seconds: float) -> None:
        def command(self: Teacher, job: TeachJob, out: Path) -> list[str]:
            return [sys.executable, str(script), str(out), job.name, str(model_dir), str(seconds)]

        monkeypatch.setattr(Teacher, "command", command)

    return use


@pytest.fixture(scope="module")
def pg() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    def make() -> str:
        if request.param == "sqlite":
            return default_url(tmp_path / "db")
        pg: PgDatabase = request.getfixturevalue("pg")
        return pg.new_empty()

    return make


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call in its own thread, released at once; their results in order."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(k: int) -> None:
        start.wait()
        results[k] = calls[k]()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def age_heartbeat(store: Store, job_id: int, seconds: float = 3600.0) -> None:
    """As if the job's runner had said nothing for `seconds`."""
    old = datetime.now(UTC) - timedelta(seconds=seconds)
    if store.dialect == "sqlite":
        old = old.replace(tzinfo=None)  # records keep SQLite's times zone-free, in UTC
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE teach_jobs SET heartbeat_at = :old WHERE id = :id"),
                     {"old": old, "id": job_id})  # fmt: skip


# --- requests -----------------------------------------------------------------------------------


def test_without_the_setting_or_the_training_package(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service(teach_settings(model_dir, tmp_path, None)) as client:
        listed = client.get("/models/teach").json()
        assert listed["items"] == [] and not listed["available"]
        assert "RBC_MODELS_DIR, which is not set" in listed["reason"]
        assert_error(client.post("/models/teach"), 409, "RBC_MODELS_DIR")
    models = tmp_path / "versions"
    with service(teach_settings(model_dir, tmp_path, models, teach_enabled=False)) as client:
        assert_error(client.post("/models/teach"), 409, "RBC_TEACH_ENABLED=false")

    # A serving install without torch and the training package (`scripts/install.sh --train`).
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in ("torch", "training") else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with service(teach_settings(model_dir, tmp_path, models)) as client:
        refused = client.post("/models/teach")
        assert_error(refused, 503, "torch and training", "`scripts/install.sh --train`")
        assert client.get("/models/teach").json()["reason"] == refused.json()["detail"]
    assert not models.exists()


def test_who_may_teach_and_which_names(
    model_dir: Path, tmp_path: Path, fake_adapt: Callable[[float], None]
) -> None:
    url = default_url(tmp_path)
    tokens = {role: admin_token(url, name, role) for name, role in (
        ("ada", "admin"), ("rae", "reviewer"), ("vic", "viewer"))}  # fmt: skip
    models = tmp_path / "versions"
    shutil.copytree(model_dir, models / "lab-a")
    fake_adapt(60.0)  # the first job stays running for the rest of the test
    with service(teach_settings(model_dir, tmp_path, models)) as client:
        assert_error(client.post("/models/teach"), 401)
        assert_error(client.post("/models/teach", headers=bearer(tokens["viewer"])), 403)
        assert_error(
            client.post("/models/teach", headers=bearer(tokens["reviewer"])), 403, "may not teach"
        )
        admin = bearer(tokens["admin"])
        for bad in ("../up", ".hidden", "a/b", "", "x" * 129):
            assert_error(client.post("/models/teach", json={"name": bad}, headers=admin), 400)
        assert_error(client.post("/models/teach", json={"name": "default"}, headers=admin), 409)
        taken = client.post("/models/teach", json={"name": "lab-a"}, headers=admin)
        assert_error(taken, 409, "'lab-a' already")

        asked = client.post("/models/teach", headers=admin)  # no body: the default name
        assert asked.status_code == 202, asked.text
        job = asked.json()
        assert job["state"] == "queued" and job["requested_by"] == "ada"
        assert job["name"].startswith("adapted-") and job["name"].endswith("Z")
        assert job["version_id"] is None and job["progress"] == 0.0
        # One at a time per database, queued or running.
        again = client.post("/models/teach", json={"name": "other"}, headers=admin)
        assert_error(again, 409, f"teach job {job['id']} is")
        viewer = bearer(tokens["viewer"])
        running = wait_job(client, job["id"], lambda j: j["stage"] == "pretending", viewer)
        assert running["state"] == "running" and running["progress"] == 0.5
        assert running["heartbeat_at"] is not None and running["attempts"] == 1
        listed = client.get("/models/teach", headers=viewer).json()
        assert listed["available"] and listed["reason"] is None
        assert [j["id"] for j in listed["items"]] == [job["id"]]
        assert_error(client.get("/models/teach/999", headers=viewer), 404)
        assert_error(client.post("/models/teach", json={"name": "x"}, headers=admin), 409)
    # The service stopped mid-run: its child was stopped, the job put back for any instance.
    with open_store(url) as store:
        back = teach_job(store, job["id"])
    assert back.state == "queued" and back.runner is None
    assert back.message == "interrupted (the service stopped); started again"
    assert sorted(p.name for p in models.iterdir()) == ["lab-a"]


# --- the real adapt -----------------------------------------------------------------------------


def test_a_job_teaches_a_new_version_that_is_listed_not_activated(
    model_dir: Path, tmp_path: Path
) -> None:
    url = lab_database(tmp_path / "rbc.sqlite3", slides=4)
    assert url == default_url(tmp_path)
    admin = bearer(admin_token(url))
    models = tmp_path / "versions"
    with service(teach_settings(model_dir, tmp_path, models, teach_poll_s=1.0)) as client:
        asked = client.post("/models/teach", json={"name": "lab-2026-12"}, headers=admin)
        assert asked.status_code == 202, asked.text
        job_id = asked.json()["id"]
        seen: list[tuple[str, float]] = []

        def finished(job: dict[str, Any]) -> bool:
            if job["state"] == "running":
                seen.append((job["stage"], job["progress"]))
            return job["state"] in ("done", "failed")

        job = wait_job(client, job_id, finished, admin, timeout=ADAPT_TIMEOUT_S)
        assert job["state"] == "done", job
        assert job["version_id"] == "lab-2026-12" and job["progress"] == 1.0
        assert job["finished_at"] is not None and job["message"] is None
        # The steps adapt reported (--progress-json) reached the row while it ran.
        assert any(stage.startswith("fitting the last layer") for stage, _ in seen), seen
        assert [p for _, p in seen] == sorted(p for _, p in seen)

        body = client.get("/models", headers=admin).json()
        versions = {v["id"]: v for v in body["items"]}
        new = versions["lab-2026-12"]
        assert new["error"] is None and new["name"] == "lab-2026-12"
        assert new["classes"][-1] == "sickle_cell" and new["adaptation"] is not None
        assert not new["active"] and body["active"] == "default"  # the lab activates it
        assert body["activation"] is None
    assert sorted(p.name for p in models.iterdir()) == ["lab-2026-12"]  # no leftovers


def test_too_few_reviewed_cells_fail_with_adapts_words(model_dir: Path, tmp_path: Path) -> None:
    url = lab_database(tmp_path / "rbc.sqlite3", slides=1, review_every=3)
    admin = bearer(admin_token(url))
    models = tmp_path / "versions"
    with service(teach_settings(model_dir, tmp_path, models)) as client:
        job_id = client.post("/models/teach", headers=admin).json()["id"]
        job = wait_job(client, job_id, lambda j: j["state"] in ("done", "failed"), admin, 120)
        assert job["state"] == "failed" and job["version_id"] is None
        assert job["message"].startswith("adapting needs at least 200 reviewed red cells"), job
        assert "\n" not in job["message"]
        # A failed job leaves no version, and blocks no new request.
        assert [v["id"] for v in client.get("/models", headers=admin).json()["items"]] == [
            "default"
        ]
        again = client.post("/models/teach", headers=admin)
        assert again.status_code == 202, again.text
    assert not models.exists() or not any(models.iterdir())


def test_a_run_past_the_time_limit_is_stopped_and_its_job_fails(
    model_dir: Path, tmp_path: Path, fake_adapt: Callable[[float], None]
) -> None:
    url = lab_database(tmp_path / "rbc.sqlite3", slides=1, review_every=3)
    admin = bearer(admin_token(url))
    models = tmp_path / "versions"
    fake_adapt(60.0)  # a child that would hang on
    settings = teach_settings(model_dir, tmp_path, models, teach_timeout_s=1.0)
    with service(settings) as client:
        job_id = client.post("/models/teach", headers=admin).json()["id"]
        job = wait_job(client, job_id, lambda j: j["state"] in ("done", "failed"), admin, 60)
    assert job["state"] == "failed", job
    assert "RBC_TEACH_TIMEOUT_S (1 s)" in job["message"]
    assert not (models / job["name"]).exists()


# --- runners: claiming, heartbeats, taking back --------------------------------------------------


def test_a_stale_job_is_queued_again_once_then_failed(database: Callable[[], str]) -> None:
    url = database()
    with open_store(url, create_dirs=True) as store:
        store.upgrade()
        admin = create_user(store, "ada", "admin")[0]
        job = request_teaching(store, admin, "lab-x")
        assert claim_teach_job(store, "dead") is not None
        assert take_back_stale(store, 60.0) == []  # its heartbeat is fresh
        age_heartbeat(store, job.id)
        (back,) = take_back_stale(store, 60.0)
        assert back.state == "queued" and back.attempts == 1 and back.runner is None
        assert back.message == "interrupted (no heartbeat for more than 60 s); started again"
        # The runner that lost it can neither beat nor finish it.
        assert not beat(store, job.id, "dead", "still here", 0.5)
        assert finish_teach_job(store, job.id, "dead", version_id="lab-x") is None
        again = claim_teach_job(store, "alive")
        assert again is not None and again.attempts == 2 and again.runner == "alive"
        assert beat(store, job.id, "alive", "fitting", 0.4)
        age_heartbeat(store, job.id)
        (failed,) = take_back_stale(store, 60.0)
        assert failed.state == "failed" and failed.finished_at is not None
        assert failed.message is not None and failed.message.startswith("interrupted twice")
        assert claim_teach_job(store, "alive") is None


def test_a_service_takes_back_a_dead_instances_job_and_finishes_it(
    model_dir: Path, tmp_path: Path, fake_adapt: Callable[[float], None]
) -> None:
    url = default_url(tmp_path)
    token = admin_token(url)
    models = tmp_path / "versions"
    with open_store(url) as store:
        (admin,) = [u for u in list_users(store) if u.name == "ada"]
        job = request_teaching(store, admin, "lab-dead")
        assert claim_teach_job(store, "an instance that died") is not None
        age_heartbeat(store, job.id)
    fake_adapt(0.0)
    settings = teach_settings(model_dir, tmp_path, models, teach_stale_s=2.0, teach_poll_s=0.2)
    with service(settings) as client:
        with open_store(url) as store:
            wait_for(lambda: teach_job(store, job.id).state == "done")
            done = teach_job(store, job.id)
        assert done.attempts == 2 and done.version_id == "lab-dead"
        assert done.message is not None and "started again" in done.message
        ids = [v["id"] for v in client.get("/models", headers=bearer(token)).json()["items"]]
        assert ids == ["default", "lab-dead"]


def test_a_run_again_keeps_its_own_result_and_never_overwrites_another(
    model_dir: Path, tmp_path: Path
) -> None:
    url = default_url(tmp_path)
    admin_token(url)
    models = tmp_path / "versions"
    settings = teach_settings(model_dir, tmp_path, models)
    records = RecordsSlot(settings)
    records.start()
    teacher = Teacher(settings, records, Versions(settings))
    store = records.get_store()
    (admin,) = [u for u in list_users(store) if u.name == "ada"]
    stop = threading.Event()
    try:
        # Its earlier run wrote the folder, then the instance died before the row said so.
        job = request_teaching(store, admin, "mine")
        claimed = claim_teach_job(store, teacher.runner_id)
        assert claimed is not None
        shutil.copytree(model_dir, models / "mine")
        card = ModelCard.load(models / "mine")
        card.name, card.created = "mine", datetime.now(UTC).isoformat(timespec="seconds")
        card.save(models / "mine")
        (models / ".mine.partial-old").mkdir()  # adapt's staging, from a killed run
        (models / ".other.partial-old").mkdir()  # another version's: not this job's to remove
        ended = teacher.execute(claimed, stop)
        assert ended is not None and ended.state == "done" and ended.version_id == "mine"
        assert sorted(p.name for p in models.iterdir()) == [".other.partial-old", "mine"]

        # A folder of that name that the job did not write is never overwritten.
        job = request_teaching(store, admin, "theirs")
        claimed = claim_teach_job(store, teacher.runner_id)
        assert claimed is not None and claimed.id == job.id
        shutil.copytree(model_dir, models / "theirs")
        before = (models / "theirs" / "model_card.json").read_text()
        ended = teacher.execute(claimed, stop)
        assert ended is not None and ended.state == "failed"
        assert ended.message is not None and "it is not overwritten" in ended.message
        assert (models / "theirs" / "model_card.json").read_text() == before
    finally:
        records.close()


def test_two_runners_on_one_database_run_a_job_once(
    model_dir: Path,
    tmp_path: Path,
    database: Callable[[], str],
    fake_adapt: Callable[[float], None],
) -> None:
    url = database()
    admin_token(url)
    fake_adapt(0.0)
    models = tmp_path / "versions"
    settings = teach_settings(model_dir, tmp_path, models, database_url=url)
    slots = [RecordsSlot(settings) for _ in range(2)]
    for slot in slots:
        slot.start()
    teachers = [Teacher(settings, slot, Versions(settings)) for slot in slots]
    store = slots[0].get_store()
    (admin,) = [u for u in list_users(store) if u.name == "ada"]
    stop = threading.Event()
    try:
        for round_ in range(4):
            job = request_teaching(store, admin, f"race-{round_}")
            ran = together([partial(t.tick, stop) for t in teachers])
            winners = [j for j in ran if j is not None]
            assert len(winners) == 1, ran
            assert winners[0].id == job.id and winners[0].state == "done"
            assert teach_job(store, job.id).attempts == 1  # claimed once, run once
        # The claim itself, many at once on one queued job: one wins.
        job = request_teaching(store, admin, "race-claims")
        got = together([partial(claim_teach_job, store, f"runner-{k}") for k in range(8)])
        assert len([j for j in got if j is not None]) == 1, got
        assert sorted(p.name for p in models.iterdir()) == [f"race-{k}" for k in range(4)]
    finally:
        for slot in slots:
            slot.close()


def test_progress_json_lines_are_what_the_runner_reads(tmp_path: Path) -> None:
    """adapt's --progress-json line and the runner's reading of it (the end-to-end test above
    runs both for real)."""
    from app.teaching import error_line

    settings = teach_settings(BASE, tmp_path, tmp_path / "versions")
    teacher = Teacher(settings, RecordsSlot(settings), Versions(settings))
    teacher._stdout_line(json.dumps({"stage": "fitting the last layer (1 of 3)", "progress": 0.25}))
    teacher._stdout_line("Chosen: l2=1")
    teacher._stdout_line('{"not": "a step"}')
    assert (teacher.stage, teacher.progress) == ("fitting the last layer (1 of 3)", 0.25)
    assert error_line(["Traceback", "error: adapting needs 200 cells", "  "], 2) == (
        "adapting needs 200 cells"
    )
    assert error_line(["Traceback (most recent call last):", "KeyError: 'x'"], 1) == "KeyError: 'x'"
    assert error_line([], -9) == "adapt was stopped by signal 9"
