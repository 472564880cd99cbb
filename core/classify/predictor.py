"""The predictor: load a verified exported model, preprocess, batched prediction, heatmaps.

What classifies is an engine (core/classify/engines.py): ONNX Runtime on the model's model.onnx
on a CPU, which needs no torch, or the torch network, rebuilt without fastai
(`core.classify.nets.load_network`: the card's architecture, the state dict of model_state.pt
after its sha256 check, tensors only). `learn.predict` is not used: it keeps per-call state on the
Learner (not thread-safe) and is slow. Preprocessing, test-time views, calibration and
familiarity are numpy, so a serving install without torch classifies exactly as one with it.

Heatmaps need gradients, so they need torch: the network is loaded on the first heatmap asked
for (`heatmaps_available` says whether torch is installed; without it a prediction has none).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from core.classify.calibration import Calibration, calibrated_probabilities
from core.classify.engines import Engine, EngineError, TorchEngine, choose_engine
from core.classify.preprocess import Preprocessor
from core.classify.tta import dihedral_view, view_indices
from core.modelcard import ModelCard, ModelFileError, verified_onnx_path, verified_state_path

if TYPE_CHECKING:
    from torch import nn

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


def torch_installed() -> bool:
    """Whether torch can be imported here (a training install), without importing it."""
    return importlib.util.find_spec("torch") is not None


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded: without one no CUDA GPU can be used,
    and "auto" need not import torch to find that out."""
    return Path("/proc/driver/nvidia/version").exists()


def resolve_device(name: str) -> str:
    """ "cpu" or "cuda" for RBC_DEVICE (auto, cpu, cuda): "auto" is the GPU where torch can use
    one, else the CPU. torch is imported only where a GPU may be used."""
    if name == "cpu" or (name == "auto" and not (torch_installed() and nvidia_driver_present())):
        return "cpu"
    if not torch_installed():
        raise ModelLoadError(
            "RBC_DEVICE=cuda needs torch, which this serving install lacks: install the "
            "training extras (scripts/install.sh --train)"
        )
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise ModelLoadError("RBC_DEVICE=cuda, but no CUDA GPU is available to torch")
    return "cpu"


class Predictor:
    def __init__(
        self,
        engine: Engine,
        card: ModelCard,
        review_threshold: float | None,
        batch_size: int = 32,
        tta_views: int | None = None,
        calibration: Calibration | None = None,
        model_dir: Path | None = None,
        device: str = "cpu",
        network: nn.Sequential | None = None,
        has_state: bool = True,
    ) -> None:
        # What classifies (core/classify/engines.py).
        self.engine = engine
        self.card = card
        self.classes = list(card.classes)
        self.device = device
        self.calibration = calibration
        # The folder the torch network is read from when heatmaps (or training) need it.
        self.model_dir = model_dir
        self._network = None if network is None else network.eval().requires_grad_(False)
        self._has_state = has_state
        self._network_lock = threading.Lock()
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

    @property
    def heatmaps_available(self) -> bool:
        """Heatmaps need the torch network: torch installed and the model's state file."""
        if self._network is not None:
            return True
        return self._has_state and self.model_dir is not None and torch_installed()

    @property
    def model(self) -> nn.Sequential:
        """The torch network `Sequential(body, head)` in eval mode, gradients off (heatmaps,
        training's adaptation): loaded, hash-checked, on first use. Needs torch."""
        with self._network_lock:
            if self._network is None:
                if self.model_dir is None or not torch_installed():
                    raise ModelLoadError(
                        "the torch network is not available here: it needs torch (the training "
                        "install, scripts/install.sh --train) and the model's folder"
                    )
                from core.classify.nets import load_network

                try:
                    network, _ = load_network(self.model_dir, device=self.device)
                except ModelFileError as exc:
                    raise ModelLoadError(str(exc)) from exc
                self._network = network.eval().requires_grad_(False)
            return self._network

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
        """Verify the model's files against the card's sha256 and build the engine that
        classifies (`engine`: auto, onnx, torch; core/classify/engines.py), then warm it up.
        ONNX Runtime reads only model.onnx; torch reads model_state.pt (tensors only, nothing
        unpickled)."""
        started = time.perf_counter()
        target = resolve_device(device)
        try:
            card = ModelCard.load(model_dir)
            calibration = Calibration.load(model_dir)
            # torch reads no graph: model.onnx is hashed only for the engine that may run it.
            onnx_path = None if engine == "torch" else verified_onnx_path(model_dir)
            # The state file is hash-checked whichever engine runs: heatmaps read it later.
            has_state = bool(card.state_file and card.state_sha256)
            if has_state:
                verified_state_path(model_dir)

            def network() -> nn.Sequential:
                from core.classify.nets import load_network

                return load_network(model_dir, device=target)[0]

            runner = choose_engine(engine, network, target, onnx_path, threads)
        except (ModelFileError, EngineError) as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            predictor = cls(
                runner,
                card,
                review_threshold,
                batch_size,
                tta_views,
                calibration,
                model_dir=Path(model_dir),
                device=target,
                network=runner.model if isinstance(runner, TorchEngine) else None,
                has_state=has_state,
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
        self.engine(np.zeros((1, 3, size, size), dtype=np.float32))

    def forward(
        self,
        batch: Any,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """Probabilities (N, n_classes) for a normalised batch; see `outputs`."""
        return self.outputs(batch, tta_views, check)[0]

    def outputs(
        self,
        batch: Any,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, n_classes), averaged over the test-time views, and the
        features the last layer reads (N, 512); see `raw_outputs`."""
        logits, features = self.raw_outputs(batch, tta_views, check)
        return calibrated_probabilities(logits, self.temperature), features

    def raw_outputs(
        self,
        batch: Any,
        tta_views: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits of each view (views, N, n_classes) and the features the last layer reads,
        averaged over the views (N, 512), for a normalised batch (N, 3, S, S; numpy, or a CPU
        torch tensor), in chunks of batch_size, with the predictor's test-time views (or
        `tta_views`). `check` runs before each chunk and may raise to stop the work (a client
        that went away)."""
        batch = np.asarray(batch, dtype=np.float32)
        views = self.tta_views if tta_views is None else tta_views
        indices = view_indices(views)
        # Every view of a chunk goes through in one pass: keep that pass at batch_size images.
        step = max(1, self.batch_size // views)
        logits, feats = [], []
        for start in range(0, len(batch), step):
            if check is not None:
                check()
            chunk = batch[start : start + step]
            stacked = (
                np.concatenate([dihedral_view(chunk, i) for i in indices]) if views > 1 else chunk
            )
            out, features = self.engine(stacked)
            logits.append(out.reshape(len(indices), len(chunk), -1))
            feats.append(features.reshape(len(indices), len(chunk), -1).mean(axis=0))
        if not logits:
            empty = np.empty((len(indices), 0, len(self.classes)), dtype=np.float32)
            return empty, np.empty((0, 0), dtype=np.float32)
        return np.concatenate(logits, axis=1), np.concatenate(feats)

    def predict(
        self,
        images: Sequence[Image.Image],
        heatmap: bool = False,
        check: Callable[[], None] | None = None,
    ) -> list[Prediction]:
        """Classify images of any size (each is brought to the input size first; an image
        already at `preprocess.resized` gives the same answer). A cell is flagged for review
        when its calibrated confidence is under the threshold or it is unlike the training
        cells. With `heatmap`, each gets a heatmap where torch can draw one
        (`heatmaps_available`). `check`: see `forward`."""
        if not images:
            return []
        resized = [self.preprocess.resized(image) for image in images]
        batch = self.preprocess.normalised(resized)
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
                    probabilities={
                        c: float(p) for c, p in zip(self.classes, row.tolist(), strict=True)
                    },
                    needs_review=confidence < self.review_threshold or unfamiliar,
                    familiarity=distance,
                    unfamiliar=unfamiliar,
                )
            )
        if heatmap and self.heatmaps_available:
            indices = [r.class_index for r in results]
            for result, png in zip(results, self.heatmaps(resized, batch, indices), strict=True):
                result.heatmap_png = png
        return results

    def familiarity(self, features: np.ndarray) -> np.ndarray | None:
        """Each feature vector's distance to the training cells; None without statistics."""
        if self.calibration is None or self.calibration.familiarity is None:
            return None
        return self.calibration.familiarity.distance(features)

    def heatmaps(
        self, resized: Sequence[Image.Image], batch: np.ndarray, indices: Sequence[int]
    ) -> list[bytes]:
        """A heatmap (core/classify/gradcam.py: LayerCAM) of each image for its class, blended
        over the image at input size (PNG). Runs the torch network (gradients)."""
        import torch

        from core.classify.gradcam import grad_cam, overlay

        model = self.model
        pngs: list[bytes] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = torch.from_numpy(batch[start : start + self.batch_size]).to(self.device)
            classes = torch.tensor(list(indices[start : start + self.batch_size]))
            cams = grad_cam(model, chunk, classes)
            for image, cam in zip(resized[start:], cams.cpu().numpy(), strict=False):
                blended = overlay(np.asarray(image), cam)
                buffer = io.BytesIO()
                Image.fromarray(blended).save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
        return pngs
