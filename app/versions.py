"""Model versions: the classifiers a laboratory may serve, switched while the service runs.

A version is a model folder (model_card.json, model_state.pt...; what `python -m training adapt
--out DIR` writes) directly inside RBC_MODELS_DIR; its id is the folder's name. RBC_MODEL_DIR is
always the version `default`. Ids are only ever looked up among the folder's own entries, never
joined to a path: nothing outside RBC_MODELS_DIR is read. Hidden entries (`.name`, such as
adapt's staging folders) are not versions; an entry that is not a usable model (a file, a link,
a folder without a valid card, a name that cannot be an id) is listed with the reason.

Which version is served is the newest row of the records' `model_activations` table
(records/activations.py). Activating loads and verifies the model first (hash checks, off the
event loop), then commits the row, then swaps the slot (app/state.py). Every instance on one
database follows: at start it serves the newest activation's version if it still exists and
verifies (else RBC_MODEL_DIR, saying why in the log), and while it runs a background thread
reads the newest activation's id every RBC_MODELS_POLL_S seconds and switches when it changed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import Conflict, Forbidden, ModelRefused, NotFoundError
from app.records_slot import RecordsSlot
from app.state import DEFAULT_ID, ModelSlot, load_predictor
from core.classify.predictor import ModelLoadError, Predictor
from core.modelcard import ModelCard, ModelFileError
from records.errors import first_line
from records.store import (
    ADMINS,
    Activation,
    User,
    latest_activation_id,
    recent_activations,
    record_activation,
)

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ADAPTATION_FILE = "adaptation.json"
# What a laboratory compares versions by, served as they are (GET /models/{id}/report and
# /before-after.png): the report of the run or the adaptation, and adapt's figure (each class's
# recall before and after). Our own outputs, small; a larger file is not served.
REPORT_FILE = "report.md"
FIGURE_FILE = "before_after.png"
MAX_SHOWN_BYTES = 4 * 1024 * 1024
HEADLINE = (
    "accuracy",
    "accuracy_weighed",
    "macro_f1",
    "unflagged_share",
    "called_normal",
    "abnormal_unflagged",
    "abnormal_missed",
)
SETTING_NEEDED = (
    "model versions are switched only when RBC_MODELS_DIR names a folder of model folders "
    "(docs/service.md, 'Model versions'); without it the service serves RBC_MODEL_DIR"
)


@dataclass(frozen=True)
class Version:
    id: str
    path: Path
    card: ModelCard | None
    error: str | None = None
    adaptation: dict[str, Any] | None = None


def headline(path: Path) -> dict[str, Any] | None:
    """adaptation.json's before/after on the laboratory's held-out test cells, the base model's
    name and the fit chosen; None without the file (or when it cannot be read)."""
    file = path / ADAPTATION_FILE
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text())
        test = summary["figures"]["lab_test"]
        chosen = summary.get("fit", {}).get("chosen")
        return {
            "base_model": str(summary["base_model"]["name"]),
            "before": {k: test["before"].get(k) for k in HEADLINE},
            "after": {k: test["after"].get(k) for k in HEADLINE},
            "fit_chosen": None if chosen is None else str(chosen),
            "warnings": [str(w) for w in summary.get("warnings", [])],
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s could not be read: %s", file, exc)
        return None


def _version(model_id: str, path: Path) -> Version:
    try:
        card = ModelCard.load(path)
    except ModelFileError as exc:
        return Version(model_id, path, None, str(exc))
    error = None if card.state_sha256 else "its card names no state file (re-export it)"
    return Version(model_id, path, card, error, headline(path))


class Versions:
    """The model versions of the settings: RBC_MODEL_DIR, then RBC_MODELS_DIR's folders."""

    def __init__(self, settings: Settings) -> None:
        self.default_dir = settings.model_dir
        self.folder = settings.models_dir

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def list(self) -> list[Version]:
        versions = [_version(DEFAULT_ID, self.default_dir)]
        if self.folder is None or not self.folder.is_dir():
            if self.folder is not None:
                log.warning("RBC_MODELS_DIR %s is not a folder", self.folder)
            return versions
        default = self.default_dir.resolve()
        for entry in sorted(self.folder.iterdir(), key=lambda p: p.name):
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_symlink():
                versions.append(Version(name, entry, None, "a link: versions must be folders"))
            elif not entry.is_dir():
                continue  # a file beside the versions (a note, an archive)
            elif entry.resolve() == default:
                continue  # RBC_MODEL_DIR itself: listed as the version "default"
            elif name == DEFAULT_ID:
                versions.append(
                    Version(name, entry, None, f"the id {DEFAULT_ID!r} is RBC_MODEL_DIR's")
                )
            elif not re.fullmatch(ID_PATTERN, name):
                versions.append(Version(name, entry, None, "the folder's name cannot be an id"))
            else:
                versions.append(_version(name, entry))
        return versions

    def find(self, model_id: str) -> Version:
        """The version whose id is exactly `model_id` (NotFoundError otherwise)."""
        for version in self.list():
            if version.id == model_id:
                return version
        raise NotFoundError(f"no model version {model_id!r}")

    def shown_file(self, model_id: str, name: str) -> bytes:
        """The bytes of `name` (REPORT_FILE or FIGURE_FILE) in the version's folder; NotFoundError
        when the version or the file is not there (a link is not followed)."""
        assert name in (REPORT_FILE, FIGURE_FILE)
        version = self.find(model_id)
        if not has_shown_file(version, name):
            raise NotFoundError(f"model version {model_id!r} has no {name}")
        data = (version.path / name).read_bytes()
        if len(data) > MAX_SHOWN_BYTES:
            raise NotFoundError(f"model version {model_id!r}'s {name} is too large to show")
        return data


def has_shown_file(version: Version, name: str) -> bool:
    """Whether the version's folder holds `name` as a plain file (not a link)."""
    file = version.path / name
    return version.card is not None and file.is_file() and not file.is_symlink()


class Switcher:
    """Activates versions in this instance and follows the other instances' activations."""

    def __init__(self, settings: Settings, slot: ModelSlot, records: RecordsSlot) -> None:
        self.settings = settings
        self.slot = slot
        self.records = records
        self.versions = Versions(settings)

    # --- loading ----------------------------------------------------------------------------

    def load(self, version: Version) -> Predictor:
        """The version's classifier, verified and warmed up; ModelRefused says why not."""
        if version.error is not None:
            raise ModelRefused(f"model version {version.id!r} cannot be served: {version.error}")
        try:
            return load_predictor(self.settings, version.path)
        except (ModelLoadError, ModelFileError) as exc:
            raise ModelRefused(f"model version {version.id!r} cannot be served: {exc}") from exc

    def follow(self, activation: Activation) -> Predictor:
        """The activation's version, loaded, with the weights it was activated with."""
        predictor = self.load(self.versions.find(activation.model_id))
        if predictor.card.state_sha256 != activation.weights_sha256:
            raise ModelRefused(
                f"model version {activation.model_id!r} changed since it was activated (its "
                f"weights are {predictor.card.state_sha256}, {activation.weights_sha256} were)"
            )
        return predictor

    # --- at start ---------------------------------------------------------------------------

    def start_choice(self) -> tuple[Predictor, str, int] | None:
        """The newest activation's version, if it still exists and verifies (for ModelSlot.load);
        None: serve RBC_MODEL_DIR (the reason is logged)."""
        store = self.records.store
        if not self.versions.enabled or store is None:
            return None
        try:
            newest = recent_activations(store, limit=1)
        except Exception as exc:  # the database went away: serve RBC_MODEL_DIR
            log.warning("model activations could not be read (%s): serving RBC_MODEL_DIR", exc)
            return None
        if not newest:
            return None
        activation = newest[0]
        try:
            predictor = self.follow(activation)
        except (ModelRefused, NotFoundError) as exc:
            log.error("the activated %s is not served: %s; serving RBC_MODEL_DIR", activation, exc)
            self.slot.activation_id = activation.id  # not tried again until the next switch
            return None
        log.info("serving model version %r (activation %d)", activation.model_id, activation.id)
        return predictor, activation.model_id, activation.id

    # --- while running ----------------------------------------------------------------------

    def follow_latest(self) -> None:
        """Switch to the newest activation when it is not the one this instance follows."""
        store = self.records.store
        if not self.versions.enabled or store is None or self.slot.predictor is None:
            return
        if latest_activation_id(store) == self.slot.activation_id:
            return
        with self.slot.switch_lock:
            newest = recent_activations(store, limit=1)
            if not newest or newest[0].id == self.slot.activation_id:
                return
            activation = newest[0]
            current = self.slot.predictor
            if (
                activation.model_id == self.slot.model_id
                and current is not None
                and current.card.state_sha256 == activation.weights_sha256
            ):
                self.slot.activation_id = activation.id
                return
            try:
                predictor = self.follow(activation)
            except (ModelRefused, NotFoundError) as exc:
                log.error(
                    "activation %d (%r) is not followed here: %s; still serving %r",
                    activation.id,
                    activation.model_id,
                    exc.detail,
                    self.slot.model_id,
                )
                self.slot.activation_id = activation.id  # not tried again until the next switch
                return
            self.slot.serve(predictor, activation.model_id, activation.id)
            log.info(
                "now serving model version %r (activation %d)", activation.model_id, activation.id
            )

    def run(self, stop: threading.Event) -> None:
        """The follower thread: wait for the first load, then check every RBC_MODELS_POLL_S."""
        self.slot.loaded.wait()
        while not stop.wait(self.settings.models_poll_s):
            try:
                self.follow_latest()
            except Exception as exc:  # a database that went away: try again next time
                log.warning("model activations could not be followed: %s", first_line(exc))

    # --- switching ----------------------------------------------------------------------------

    def activate(self, user: User, model_id: str, action: str = "activate") -> Activation:
        """Load and verify the version, record the activation (committed), then serve it. Runs
        in a worker thread (it loads a model)."""
        if not self.versions.enabled:
            raise Conflict(SETTING_NEEDED)
        if user.role not in ADMINS:
            raise Forbidden(f"user {user.name!r} ({user.role}) may not switch the served model")
        store = self.records.get_store()
        version = self.versions.find(model_id)
        current = self.slot.predictor
        if (
            action == "activate"
            and model_id == self.slot.model_id
            and current is not None
            and version.card is not None
            and current.card.state_sha256 == version.card.state_sha256
        ):
            raise Conflict(f"model version {model_id!r} is the active one already")
        predictor = self.load(version)
        card = predictor.card
        assert card.state_sha256, "load_predictor serves verified state files only"
        with self.slot.switch_lock:
            activation = record_activation(
                store, user, model_id, card.name, card.state_sha256, action
            )
            self.slot.serve(predictor, model_id, activation.id)
        log.info("%s: model version %r now served (%s)", user.name, model_id, action)
        return activation

    def rollback(self, user: User) -> Activation:
        """Activate the version that was active before the current activation (the default
        before the first one); Conflict when nothing was ever activated."""
        if not self.versions.enabled:
            raise Conflict(SETTING_NEEDED)
        newest = recent_activations(self.records.get_store(), limit=2)
        if not newest:
            raise Conflict("no model version was ever activated: there is nothing to roll back")
        previous = newest[1].model_id if len(newest) > 1 else DEFAULT_ID
        return self.activate(user, previous, action="rollback")
