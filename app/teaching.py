"""Teach the model: `python -m training adapt` as a job outside the web request (issue 27).

POST /models/teach (admins) records a queued job in the records database (records/teaching.py,
table `teach_jobs`) and answers at once. In every instance a runner thread (started in the
lifespan when this instance can teach) looks for a queued job every RBC_TEACH_POLL_S seconds,
claims the oldest one (one instance wins it), and runs

    <this python> -m training adapt --out RBC_MODELS_DIR/<name> --name <name> --base BASE
        --no-progress --progress-json

as a child process, with the records database's URL in RBC_DATABASE_URL (not on the command
line, where `ps` would show a password). adapt's JSON lines ({"stage", "progress"}) go into the
row with a heartbeat every RBC_TEACH_POLL_S seconds; the row ends done (the new version's id)
or failed (adapt's own one-line refusal). The new version is not activated: the laboratory
compares it (GET /models) and activates it.

A job whose heartbeat is older than RBC_TEACH_STALE_S (its instance died) is taken back by any
runner: queued again once, failed after a second interruption; an instance that shuts down
stops its child and puts its job back the same way. adapt writes its folder whole or not at
all, so a run again starts clean: the hidden staging leftovers of this job's name are removed,
and a complete folder left by this job's own earlier run (its card names the job's version and
was written after the request) is taken as the result. Any other folder of that name is never
overwritten: the job fails saying so.

The service never imports training (the import-linter contract): it only asks whether the
package and torch can be found, and runs the command.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from app.config import Settings
from app.errors import Conflict, Forbidden, NotReady, ServiceError
from app.records_slot import RecordsSlot
from app.state import DEFAULT_ID
from app.versions import SETTING_NEEDED, Versions
from core.modelcard import ModelCard, ModelFileError
from records.errors import first_line
from records.store import (
    ADMINS,
    TeachJob,
    User,
    beat,
    claim_teach_job,
    finish_teach_job,
    interrupt_teach_job,
    request_teaching,
    take_back_stale,
    teach_job,
    teach_jobs,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TRAINING = "scripts/install.sh --train"
TURNED_OFF = "teaching is turned off on this service (RBC_TEACH_ENABLED=false)"
NEEDS_MODELS_DIR = (
    "teaching writes a new model version into RBC_MODELS_DIR, which is not set: " + SETTING_NEEDED
)
STOP_WAIT_S = 10.0  # a child asked to stop gets this long before it is killed
TAIL_LINES = 40  # lines of the child's stderr kept for the failure message and the log


def training_missing() -> str | None:
    """Why this installation cannot run `python -m training adapt`, or None when it can. Only
    looks the modules up: nothing is imported."""
    missing = [name for name in ("torch", "training") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"teaching needs the training package and torch, and this installation lacks "
        f"{' and '.join(missing)}: install them with `{INSTALL_TRAINING}`"
    )


def default_name(now: datetime | None = None) -> str:
    """adapted-<UTC timestamp>, e.g. adapted-20261207T101500Z."""
    return "adapted-" + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def error_line(stderr: list[str], returncode: int) -> str:
    """adapt's own refusal ("error: ..." is how the CLI says it), else the last line it wrote
    (a crash's exception), else how it ended."""
    lines = [line.strip() for line in stderr if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    if lines:
        return lines[-1]
    if returncode < 0:
        return f"adapt was stopped by signal {-returncode}"
    return f"adapt stopped with exit code {returncode}"


class Teacher:
    """Teach requests (the routes) and this instance's runner (a thread of the lifespan)."""

    def __init__(self, settings: Settings, records: RecordsSlot, versions: Versions) -> None:
        self.settings = settings
        self.records = records
        self.versions = versions
        self.folder = settings.models_dir
        self.base = settings.teach_base_dir or settings.model_dir
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stage = ""
        self.progress = 0.0

    # --- requests -------------------------------------------------------------------------

    def unavailable(self) -> ServiceError | None:
        """Why this instance takes no teach requests (the error to answer), None when it does."""
        if not self.settings.teach_enabled:
            return Conflict(TURNED_OFF)
        if self.folder is None:
            return Conflict(NEEDS_MODELS_DIR)
        if self.folder.exists() and not self.folder.is_dir():
            return Conflict(f"RBC_MODELS_DIR {self.folder} is not a folder")
        missing = training_missing()
        return NotReady(missing) if missing else None

    def request(self, user: User, name: str | None) -> TeachJob:
        """Queue a job that writes the version `name` (default: adapted-<UTC time>). Refused
        like an activation: no setting (409), not an admin (403); then no training here (503),
        a name that is taken (409), a job queued or running (409)."""
        refused = self.unavailable()
        if isinstance(refused, Conflict):
            raise refused
        if user.role not in ADMINS:
            raise Forbidden(f"user {user.name!r} ({user.role}) may not teach the model")
        if refused is not None:
            raise refused
        assert self.folder is not None
        name = name or default_name()
        if name == DEFAULT_ID:
            raise Conflict(f"the id {DEFAULT_ID!r} is RBC_MODEL_DIR's: choose another name")
        # Looked up among the folder's own entries (a file or a broken link counts as taken).
        taken = self.folder.is_dir() and any(e.name == name for e in self.folder.iterdir())
        if taken:
            raise Conflict(
                f"RBC_MODELS_DIR has an entry named {name!r} already: choose another name"
            )
        return request_teaching(self.records.get_store(), user, name)

    def jobs(self, limit: int) -> list[TeachJob]:
        return teach_jobs(self.records.get_store(), limit)

    def job(self, job_id: int) -> TeachJob:
        return teach_job(self.records.get_store(), job_id)

    # --- the runner -----------------------------------------------------------------------

    @property
    def runs_here(self) -> bool:
        return self.unavailable() is None

    def start(self, stop: threading.Event) -> threading.Thread | None:
        """The runner thread, when this instance can teach (else None, and the log says why)."""
        refused = self.unavailable()
        if refused is not None:
            log.info("teach jobs are not run by this instance: %s", refused.detail)
            return None
        thread = threading.Thread(target=self.run, args=(stop,), name="teach-runner", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Every RBC_TEACH_POLL_S: take back stale jobs, claim the oldest queued one, run it."""
        while not stop.is_set():
            try:
                self.tick(stop)
            except Exception as exc:  # a database that went away: try again next time
                log.warning("teach jobs could not be run: %s", first_line(exc))
            stop.wait(self.settings.teach_poll_s)

    def tick(self, stop: threading.Event) -> TeachJob | None:
        """One look: stale jobs taken back, then the oldest queued job claimed and run to its
        end here. Returns the job as it ended (None when none was claimed)."""
        store = self.records.store
        if store is None:
            return None
        for job in take_back_stale(store, self.settings.teach_stale_s):
            log.warning("teach job %d (%r) taken back: %s", job.id, job.name, job.message)
        claimed = claim_teach_job(store, self.runner_id)
        if claimed is None:
            return None
        log.info(
            "teach job %d: adapting into version %r (run %d)",
            claimed.id,
            claimed.name,
            claimed.attempts,
        )
        return self.execute(claimed, stop)

    def execute(self, job: TeachJob, stop: threading.Event) -> TeachJob | None:
        """Run adapt for `job` (claimed by this runner) and record how it ended."""
        store = self.records.get_store()
        assert self.folder is not None
        out = self.folder / job.name
        self._remove_staging(job.name)
        if os.path.lexists(out):
            if self._left_by(job, out):
                log.info("teach job %d: %s was written by its earlier run", job.id, out)
                return finish_teach_job(store, job.id, self.runner_id, version_id=job.name)
            return finish_teach_job(
                store,
                job.id,
                self.runner_id,
                error=f"RBC_MODELS_DIR has an entry named {job.name!r} that this job did not "
                "write: it is not overwritten; request again with another name",
            )
        returncode, stderr = self._run_adapt(job, out, stop)
        if returncode is None:  # stopped: the job was put back or taken from this runner
            return None
        if returncode == 0:
            version = self.versions.find(job.name)
            if version.error is None:
                log.info("teach job %d done: version %r", job.id, job.name)
                return finish_teach_job(store, job.id, self.runner_id, version_id=job.name)
            message = f"adapt finished, but the version cannot be served: {version.error}"
        else:
            message = error_line(stderr, returncode)
        log.warning("teach job %d failed: %s", job.id, message)
        return finish_teach_job(store, job.id, self.runner_id, error=message)

    def command(self, job: TeachJob, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "training",
            "adapt",
            "--out",
            str(out),
            "--name",
            job.name,
            "--base",
            str(Path(self.base).resolve()),
            "--no-progress",
            "--progress-json",
        ]

    def _run_adapt(
        self, job: TeachJob, out: Path, stop: threading.Event
    ) -> tuple[int | None, list[str]]:
        """The child's exit code and the end of its stderr; None when it was stopped (this
        instance shuts down, or the job was taken back from this runner)."""
        store = self.records.get_store()
        url = self.records.url
        assert url is not None
        env = {**os.environ, "RBC_DATABASE_URL": url}
        self.stage, self.progress = "starting", 0.0
        process = subprocess.Popen(
            self.command(job, out),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: stopped whole
        )
        assert process.stdout is not None and process.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        readers = [
            _reader(process.stdout, self._stdout_line, "teach-stdout"),
            _reader(process.stderr, tail.append, "teach-stderr"),
        ]
        started = last_beat = time.monotonic()
        try:
            while process.poll() is None:
                if time.monotonic() - started > self.settings.teach_timeout_s:
                    _stop(process)
                    limit = self.settings.teach_timeout_s
                    tail.append(
                        f"error: adapt ran longer than RBC_TEACH_TIMEOUT_S ({limit:g} s) and was "
                        "stopped"
                    )
                    break
                if stop.wait(0.2):
                    _stop(process)
                    try:
                        back = interrupt_teach_job(
                            store, job.id, self.runner_id, "the service stopped"
                        )
                        log.warning(
                            "teach job %d stopped with the service: %s",
                            job.id,
                            back.state if back else "no longer ours",
                        )
                    except Exception as exc:  # the stale limit takes it back instead
                        log.warning("teach job %d not put back: %s", job.id, first_line(exc))
                    return None, list(tail)
                if time.monotonic() - last_beat >= self.settings.teach_poll_s:
                    last_beat = time.monotonic()
                    if not self._beat(job):
                        _stop(process)
                        log.error(
                            "teach job %d was taken back from this instance (no heartbeat for "
                            "%g s): its run here is stopped",
                            job.id,
                            self.settings.teach_stale_s,
                        )
                        return None, list(tail)
        finally:
            if process.poll() is None:
                _stop(process)
            for reader in readers:
                reader.join(timeout=5)
        self._beat(job)
        return process.returncode if process.returncode is not None else -9, list(tail)

    def _beat(self, job: TeachJob) -> bool:
        """The heartbeat; True when the job is still this runner's (a database error counts as
        still ours: the stale limit decides)."""
        try:
            return beat(self.records.get_store(), job.id, self.runner_id, self.stage, self.progress)
        except Exception as exc:
            log.warning("teach job %d: heartbeat not written: %s", job.id, first_line(exc))
            return True

    def _stdout_line(self, line: str) -> None:
        text = line.strip()
        if text.startswith("{"):
            try:
                step = json.loads(text)
                stage, progress = str(step["stage"]), float(step["progress"])
            except (ValueError, KeyError, TypeError):
                log.debug("adapt: %s", text)
                return
            self.stage, self.progress = stage[:200], min(1.0, max(0.0, progress))
        elif text:
            log.info("adapt: %s", text)

    def _remove_staging(self, name: str) -> None:
        """Hidden leftovers of an earlier, killed run of this version (adapt's staging and
        scratch folders, `.NAME.partial-*` and `.NAME.cells-*`)."""
        assert self.folder is not None
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            leftover = entry.name.startswith((f".{name}.partial-", f".{name}.cells-"))
            if leftover and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                log.info("removed %s, left by an interrupted run", entry)

    @staticmethod
    def _left_by(job: TeachJob, out: Path) -> bool:
        """`out` is complete and this job's: its card names the job's version (adapt --name)
        and was written after the job was requested."""
        if out.is_symlink() or not out.is_dir():
            return False
        try:
            card = ModelCard.load(out)
            created = datetime.fromisoformat(card.created)
        except (ModelFileError, ValueError):
            return False
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return card.name == job.name and created >= job.requested_at.replace(microsecond=0)


def _reader(stream: IO[str], handle: Callable[[str], None], name: str) -> threading.Thread:
    def read() -> None:
        for line in stream:
            handle(line.rstrip("\n"))
        stream.close()

    thread = threading.Thread(target=read, name=name, daemon=True)
    thread.start()
    return thread


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the child's process group, SIGKILL after STOP_WAIT_S."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
