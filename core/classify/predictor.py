"""The predictor: load a verified exported model, preprocess, batched prediction, Grad-CAM.

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

from core.classify.gradcam import grad_cam, overlay
from core.classify.nets import load_network
from core.classify.preprocess import Preprocessor
from core.classify.tta import tta_probabilities, view_indices
from core.modelcard import ModelCard, ModelFileError

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
        review_threshold: float,
        batch_size: int = 32,
        tta_views: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Sequential):
            raise ValueError("the network is not nn.Sequential(body, head), as training builds it")
        self.model = model.eval().to(device)
        self.model.requires_grad_(False)
        self.card = card
        self.classes = list(card.classes)
        self.device = device
        self.review_threshold = review_threshold
        self.batch_size = batch_size
        self.preprocess = Preprocessor.from_card(card)
        # The card's view count unless the caller asks for another (1 is fastest).
        self.tta_views = card.tta_views if tta_views is None else tta_views
        view_indices(self.tta_views)  # ValueError on an unsupported count
        self.load_seconds = 0.0

    @classmethod
    def load(
        cls,
        model_dir: Path,
        device: str = "auto",
        review_threshold: float = 0.7,
        batch_size: int = 32,
        threads: int = 0,
        tta_views: int | None = None,
    ) -> Predictor:
        """Verify the state file's sha256 against the card, then build the network, load the
        state dict into it (tensors only, nothing unpickled) and warm it up."""
        started = time.perf_counter()
        target = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        try:
            network, card = load_network(model_dir, device=target)
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            predictor = cls(network, card, target, review_threshold, batch_size, tta_views)
        except ValueError as exc:
            raise ModelLoadError(f"model card of {model_dir}: {exc}") from exc
        predictor.warm_up()
        predictor.load_seconds = time.perf_counter() - started
        log.info(
            "model %s (%s, %d classes, %d test-time views) ready on %s in %.1f s",
            card.name,
            card.architecture,
            len(card.classes),
            predictor.tta_views,
            target,
            predictor.load_seconds,
        )
        return predictor

    def warm_up(self) -> None:
        size = self.preprocess.size
        with torch.inference_mode():
            self.model(torch.zeros(1, 3, size, size, device=self.device))

    def forward(
        self,
        batch: torch.Tensor,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Probabilities (N, n_classes) for a normalised batch, in chunks of batch_size, averaged
        over the predictor's test-time views (or `tta_views`). `check` runs before each chunk
        and may raise to stop the work (a client that went away)."""
        views = self.tta_views if tta_views is None else tta_views
        # Every view of a chunk goes through in one pass: keep that pass at batch_size images.
        step = max(1, self.batch_size // views)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(batch), step):
                if check is not None:
                    check()
                chunk = batch[start : start + step].to(self.device)
                outputs.append(tta_probabilities(self.model, chunk, views).cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.classes))

    def predict(
        self,
        images: Sequence[Image.Image],
        heatmap: bool = False,
        check: Callable[[], None] | None = None,
    ) -> list[Prediction]:
        """Classify images of any size (each is brought to the input size first; an image
        already at `preprocess.resized` gives the same answer). `check`: see `forward`."""
        if not images:
            return []
        resized = [self.preprocess.resized(image) for image in images]
        batch = torch.stack([self.preprocess.to_tensor(image) for image in resized])
        probs = self.forward(batch, check=check)
        results = []
        for row in probs:
            index = int(row.argmax())
            confidence = float(row[index])
            results.append(
                Prediction(
                    label=self.classes[index],
                    class_index=index,
                    confidence=confidence,
                    probabilities={c: float(p) for c, p in zip(self.classes, row, strict=True)},
                    needs_review=confidence < self.review_threshold,
                )
            )
        if heatmap:
            indices = torch.tensor([r.class_index for r in results])
            for result, png in zip(results, self.heatmaps(resized, batch, indices), strict=True):
                result.heatmap_png = png
        return results

    def heatmaps(
        self, resized: Sequence[Image.Image], batch: torch.Tensor, indices: torch.Tensor
    ) -> list[bytes]:
        """Grad-CAM of each image for its class, blended over the image at input size (PNG)."""
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
