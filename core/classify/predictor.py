"""The predictor: load a verified exported model, preprocess, batched prediction, heatmaps.

The network is rebuilt without fastai (`core.classify.nets.load_network`: the card's architecture,
the state dict of model_state.pt after its sha256 check, tensors only). `learn.predict` is not
used: it keeps per-call state on the Learner (not thread-safe) and is slow. The network, in eval
mode with gradients off, is called directly under `torch.inference_mode`, which is safe from many
threads.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.classify.calibration import Calibration, calibrated_probabilities
from core.classify.engines import Engine, EngineError, TorchEngine, choose_engine
from core.classify.gradcam import grad_cam, overlay
from core.classify.nets import load_network
from core.classify.preprocess import Preprocessor
from core.classify.tta import dihedral_view, view_indices
from core.modelcard import ModelCard, ModelFileError, verified_onnx_path

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """The configured model cannot be served (missing, failed its hash, wrong device...)."""


@dataclass
class Prediction:
    label: str
    class_index: int
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    heatmap_png: bytes | None = None
    # Distance to the training cells in the network's feature space (under 1 for a typical training
    # cell; core/classify/calibration.py), and whether it is beyond the model's threshold. None
    # for a model without calibration statistics.
    familiarity: float | None = None
    unfamiliar: bool = False

    def heatmap_data_url(self) -> str | None:
        return None if self.heatmap_png is None else png_data_url(self.heatmap_png)


def png_data_url(png: bytes) -> str:
    """PNG bytes as a data URL, the form the API returns images in."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return png_data_url(buffer.getvalue())


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("RBC_DEVICE=cuda, but no CUDA GPU is available to torch")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Predictor:
    def __init__(
        self,
        model: nn.Sequential,
        card: ModelCard,
        device: torch.device,
        review_threshold: float | None,
        batch_size: int = 32,
        tta_views: int | None = None,
        calibration: Calibration | None = None,
        engine: Engine | None = None,
    ) -> None:
        if not isinstance(model, nn.Sequential):
            raise ValueError("the network is not nn.Sequential(body, head), as training builds it")
        self.model = model.eval().to(device)
        self.model.requires_grad_(False)
        # What classifies (core/classify/engines.py); heatmaps always use the torch model.
        self.engine: Engine = engine or TorchEngine(self.model, device)
        self.card = card
        self.classes = list(card.classes)
        self.device = device
        self.calibration = calibration
        # Given (a setting) or the model's own, chosen on validation; 0.7 for a model without.
        if review_threshold is None:
            review_threshold = calibration.review_threshold if calibration else 0.7
        self.review_threshold = review_threshold
        self.batch_size = batch_size
        self.preprocess = Preprocessor.from_card(card)
        # The card's view count unless the caller asks for another (1 is fastest).
        self.tta_views = card.tta_views if tta_views is None else tta_views
        view_indices(self.tta_views)  # ValueError on an unsupported count
        self.load_seconds = 0.0

    @property
    def temperature(self) -> float:
        """The calibration's temperature; 1 (the plain softmax) without one."""
        return self.calibration.temperature if self.calibration else 1.0

    @classmethod
    def load(
        cls,
        model_dir: Path,
        device: str = "auto",
        review_threshold: float | None = None,
        batch_size: int = 32,
        threads: int = 0,
        tta_views: int | None = None,
        engine: str = "auto",
    ) -> Predictor:
        """Verify the state file's sha256 against the card, then build the network, load the
        state dict into it (tensors only, nothing unpickled) and warm it up. `engine` (auto,
        onnx, torch: core/classify/engines.py) chooses what classifies; model.onnx is
        hash-checked like the state file."""
        started = time.perf_counter()
        target = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        try:
            network, card = load_network(model_dir, device=target)
            calibration = Calibration.load(model_dir)
            # torch reads no graph: model.onnx is hashed only for the engine that may run it.
            onnx_path = None if engine == "torch" else verified_onnx_path(model_dir)
            runner = choose_engine(engine, network, target, onnx_path, threads)
        except (ModelFileError, EngineError) as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            predictor = cls(
                network, card, target, review_threshold, batch_size, tta_views, calibration, runner
            )
        except ValueError as exc:
            raise ModelLoadError(f"model card of {model_dir}: {exc}") from exc
        predictor.warm_up()
        predictor.load_seconds = time.perf_counter() - started
        log.info(
            "model %s (%s, %d classes, %d test-time views) ready on %s (%s) in %.1f s",
            card.name,
            card.architecture,
            len(card.classes),
            predictor.tta_views,
            target,
            predictor.engine.name,
            predictor.load_seconds,
        )
        return predictor

    def warm_up(self) -> None:
        size = self.preprocess.size
        self.engine(torch.zeros(1, 3, size, size))

    def forward(
        self,
        batch: torch.Tensor,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Probabilities (N, n_classes) for a normalised batch; see `outputs`."""
        return self.outputs(batch, tta_views, check)[0]

    def outputs(
        self,
        batch: torch.Tensor,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated probabilities (N, n_classes), averaged over the test-time views, and the
        features the last layer reads (N, 512); see `raw_outputs`."""
        logits, features = self.raw_outputs(batch, tta_views, check)
        return calibrated_probabilities(logits, self.temperature), features

    def raw_outputs(
        self,
        batch: torch.Tensor,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of each view (views, N, n_classes) and the features the last layer reads,
        averaged over the views (N, 512), for a normalised batch, in chunks of batch_size, with
        the predictor's test-time views (or `tta_views`). `check` runs before each chunk and may
        raise to stop the work (a client that went away)."""
        views = self.tta_views if tta_views is None else tta_views
        indices = view_indices(views)
        # Every view of a chunk goes through in one pass: keep that pass at batch_size images.
        step = max(1, self.batch_size // views)
        logits, feats = [], []
        with torch.inference_mode():
            for start in range(0, len(batch), step):
                if check is not None:
                    check()
                chunk = batch[start : start + step]
                stacked = (
                    torch.cat([dihedral_view(chunk, i) for i in indices]) if views > 1 else chunk
                )
                out, features = self.engine(stacked)
                logits.append(out.view(len(indices), len(chunk), -1))
                feats.append(features.view(len(indices), len(chunk), -1).mean(dim=0))
        if not logits:
            return torch.empty(len(indices), 0, len(self.classes)), torch.empty(0, 0)
        return torch.cat(logits, dim=1), torch.cat(feats)

    def predict(
        self,
        images: Sequence[Image.Image],
        heatmap: bool = False,
        check: Callable[[], None] | None = None,
    ) -> list[Prediction]:
        """Classify images of any size (each is brought to the input size first; an image
        already at `preprocess.resized` gives the same answer). A cell is flagged for review
        when its calibrated confidence is under the threshold or it is unlike the training
        cells. `check`: see `forward`."""
        if not images:
            return []
        resized = [self.preprocess.resized(image) for image in images]
        batch = torch.stack([self.preprocess.to_tensor(image) for image in resized])
        probs, features = self.outputs(batch, check=check)
        familiarity = self.familiarity(features)
        results = []
        for i, row in enumerate(probs):
            index = int(row.argmax())
            confidence = float(row[index])
            distance = None if familiarity is None else float(familiarity[i])
            unfamiliar = self.calibration is not None and self.calibration.is_unfamiliar_cell(
                distance
            )
            results.append(
                Prediction(
                    label=self.classes[index],
                    class_index=index,
                    confidence=confidence,
                    probabilities={c: float(p) for c, p in zip(self.classes, row, strict=True)},
                    needs_review=confidence < self.review_threshold or unfamiliar,
                    familiarity=distance,
                    unfamiliar=unfamiliar,
                )
            )
        if heatmap:
            indices = torch.tensor([r.class_index for r in results])
            for result, png in zip(results, self.heatmaps(resized, batch, indices), strict=True):
                result.heatmap_png = png
        return results

    def familiarity(self, features: torch.Tensor) -> torch.Tensor | None:
        """Each feature vector's distance to the training cells; None without statistics."""
        if self.calibration is None or self.calibration.familiarity is None:
            return None
        return self.calibration.familiarity.distance(features)

    def heatmaps(
        self, resized: Sequence[Image.Image], batch: torch.Tensor, indices: torch.Tensor
    ) -> list[bytes]:
        """A heatmap (core/classify/gradcam.py: LayerCAM) of each image for its class, blended
        over the image at input size (PNG)."""
        pngs: list[bytes] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size].to(self.device)
            cams = grad_cam(self.model, chunk, indices[start : start + self.batch_size])
            for image, cam in zip(resized[start:], cams.cpu().numpy(), strict=False):
                blended = overlay(np.asarray(image), cam)
                buffer = io.BytesIO()
                Image.fromarray(blended).save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
        return pngs
