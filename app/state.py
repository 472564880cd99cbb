"""The model slot shared by the lifespan and the routes: empty until the loader fills it.

The classifier in the slot can be switched while the service runs (app/versions.py: a model
version activated, or another instance's activation followed). A switch replaces the slot's
`predictor` with a fully loaded one in one assignment; a request takes the predictor once (the
`PredictorDep` dependency), so requests in flight finish on the model they started with."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

from app.config import Settings
from core.classify.predictor import ModelLoadError, Predictor
from core.detect.learned import CellDetector
from core.modelcard import ModelCard, ModelFileError
from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL

log = logging.getLogger(__name__)


DEFAULT_ID = "default"  # the model version of RBC_MODEL_DIR (app/versions.py)

# What the start serves instead of RBC_MODEL_DIR: (predictor, version id, activation id), or None.
StartChoice = Callable[[], tuple[Predictor, str, int] | None]


class ModelSlot:
    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.detector: CellDetector | None = None
        self.error: str | None = None
        self.loaded = threading.Event()
        # Which model version is served (app/versions.py), and the activation row it follows
        # (None: none seen yet). Switches hold `switch_lock`.
        self.model_id = DEFAULT_ID
        self.activation_id: int | None = None
        self.switch_lock = threading.Lock()
        # What the start serves instead of RBC_MODEL_DIR (the newest activation), set before
        # `load` runs; `load` keeps its one-argument form, which tests patch.
        self.start_choice: StartChoice | None = None

    def serve(self, predictor: Predictor, model_id: str, activation_id: int | None) -> None:
        """Serve `predictor` (loaded and verified) from now on; requests that took the old one
        finish on it."""
        self.predictor, self.model_id, self.activation_id = predictor, model_id, activation_id

    def load(self, settings: Settings) -> None:
        """Load the configured model (or what `start_choice` picks: the latest activation); on
        failure keep the reason (and /readyz stays 503)."""
        choose = self.start_choice
        try:
            if detector_enabled(settings):
                self.detector = CellDetector.load(
                    settings.detector_dir, device="cpu", engine=settings.engine
                )
                log.info("cell detector %s loaded", self.detector.card.name)
            chosen = choose() if choose is not None else None
            if chosen is not None:
                self.serve(*chosen)
            else:
                self.predictor = load_predictor(settings, settings.model_dir)
        except (ModelLoadError, ModelFileError) as exc:
            self.error = str(exc)
            log.error("the model could not be loaded: %s", exc)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the model could not be loaded")
        finally:
            self.loaded.set()


def load_predictor(settings: Settings, model_dir: Path) -> Predictor:
    """The classifier of `model_dir` as this service serves it: hash-checked, loaded, warmed up,
    at the training scale. ModelLoadError (or ModelFileError) says why not."""
    predictor = Predictor.load(
        model_dir,
        device=settings.device,
        review_threshold=settings.review_threshold,
        batch_size=settings.inference_batch_size,
        threads=settings.torch_threads,
        tta_views=settings.tta_views,
        engine=settings.engine,
    )
    check_training_scale(predictor.card)
    return predictor


def check_training_scale(card: ModelCard) -> None:
    """ModelLoadError unless the classifier learnt at the scale this service cuts cells at: the
    whole pipeline (limits, framing, crops) brings fields to one scale."""
    if not math.isclose(card.microns_per_pixel, TRAINING_MICRONS_PER_PIXEL, rel_tol=1e-6):
        raise ModelLoadError(
            f"model {card.name} learnt from cells at {card.microns_per_pixel} um per pixel; this "
            f"service cuts cells at {TRAINING_MICRONS_PER_PIXEL} um per pixel "
            "(core.smear.analysis.TRAINING_MICRONS_PER_PIXEL)"
        )


def detector_enabled(settings: Settings) -> bool:
    """A detector folder is configured and exists (else whole fields use the classical one)."""
    return str(settings.detector_dir) != "none" and settings.detector_dir.exists()
