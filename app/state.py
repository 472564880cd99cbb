"""The model slot shared by the lifespan and the routes: empty until the loader fills it."""

from __future__ import annotations

import logging
import math
import threading

from app.config import Settings
from core.classify.predictor import ModelLoadError, Predictor
from core.detect.learned import CellDetector
from core.modelcard import ModelCard, ModelFileError
from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL

log = logging.getLogger(__name__)


class ModelSlot:
    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.detector: CellDetector | None = None
        self.error: str | None = None
        self.loaded = threading.Event()

    def load(self, settings: Settings) -> None:
        """Load the configured model; on failure keep the reason (and /readyz stays 503)."""
        try:
            if detector_enabled(settings):
                self.detector = CellDetector.load(
                    settings.detector_dir, device="cpu", engine=settings.engine
                )
                log.info("cell detector %s loaded", self.detector.card.name)
            self.predictor = Predictor.load(
                settings.model_dir,
                device=settings.device,
                review_threshold=settings.review_threshold,
                batch_size=settings.inference_batch_size,
                threads=settings.torch_threads,
                tta_views=settings.tta_views,
                engine=settings.engine,
            )
            check_training_scale(self.predictor.card)
        except (ModelLoadError, ModelFileError) as exc:
            self.error = str(exc)
            log.error("the model could not be loaded: %s", exc)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the model could not be loaded")
        finally:
            self.loaded.set()


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
