"""Calibrated confidence and a familiarity score: how far the classifier's answers can be trusted.

Fitted after training on the validation split (`python -m training calibrate`) and stored beside
the weights, so the service needs no training code to use them:

- **Temperature.** A network's top probability is over-confident after training; dividing its
  logits by one number T fitted on validation (minimum negative log-likelihood) makes "0.9" mean
  right about 9 times in 10 without changing any class.
- **Review threshold.** The calibrated confidence below which a cell is flagged for review, chosen
  on validation so that the cells not flagged are right at a stated rate (the card says which).
- **Familiarity.** A cell's distance, in the network's own feature space (the 512 values the last
  layer reads), to the nearest class of training cells: a Mahalanobis distance with one shared
  covariance (Lee et al., 2018), divided by the square root of the dimension so that a typical
  training cell scores under 1 (about 0.7 on the shipped model). A cell from another stain or
  camera lands far from every class even when its softmax is confident. A field's score is the
  median of its cells' distances.
  Thresholds: the cell one flags about 1 % of validation cells; the field one about 1 % of
  validation fields.
- **Field colours.** A second, independent signal for whole fields: 13 numbers describing a
  field's stain and light (`field_colour_descriptor`: CIELAB median and spread of its cell and
  background pixels, and the cells' share of the field), and the distance to the K-th nearest
  training field, each number scaled by its spread over the training fields. The stain
  augmentation teaches the network to ignore colour, so its features alone see another
  laboratory's stain less; the colours see it directly. Threshold: about 1 % of validation fields.
  A field is unfamiliar when either signal says so.

Files: calibration.json (numbers, the figures measured when fitted, the arrays' sha256) and
calibration.npz (class means and whitening matrix, and the training fields' colour descriptors;
plain arrays, read with allow_pickle=False after its hash is checked, like the weights). Models
calibrated before the service ran without torch have calibration.pt (torch.save, tensors only):
it is read with torch where torch is installed, and `python -m training export-onnx --model DIR`
rewrites it as calibration.npz.

Serving uses numpy only; the fitting measures at the end (temperature, review threshold,
reliability) take the torch tensors training computes, and import torch when called.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from core.modelcard import ModelFileError, sha256_file

if TYPE_CHECKING:
    import torch

CALIBRATION_JSON = "calibration.json"
CALIBRATION_ARRAYS = "calibration.npz"
CALIBRATION_TENSORS = "calibration.pt"  # the torch format of models calibrated before
FORMAT_VERSION = 2  # 2: field colours (optional on load: a version-1 file has none)
COLOUR_SIDE = 320  # px: fields are shrunk to this longest side before their colours are read
COLOUR_NEIGHBOUR = 5  # K: the distance to the K-th nearest training field


@dataclass
class Familiarity:
    """Distance of feature vectors to the nearest training class, in whitened feature space."""

    means: np.ndarray  # (classes, D) float32: class means, whitened
    whiten: np.ndarray  # (D, D) float32: z = f @ whiten has an identity within-class covariance

    @classmethod
    def fit(cls, features: Any, labels: Any, shrinkage: float = 0.05) -> Familiarity:
        """Class means and one shared covariance of `features` (N, D) with `labels` (N,),
        shrunk toward a multiple of the identity (a few thousand cells do not pin down a
        512 x 512 covariance). Arrays or CPU tensors."""
        f = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        classes = sorted(int(c) for c in np.unique(y))
        means = np.stack([f[y == c].mean(axis=0) for c in classes])
        lookup = np.full(int(y.max()) + 1, -1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        centred = f - means[lookup[y]]
        cov = centred.T @ centred / max(1, len(f) - len(classes))
        dim = cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
        whiten = np.linalg.cholesky(np.linalg.inv(cov))  # P = L L^T
        return cls(means=(means @ whiten).astype(np.float32), whiten=whiten.astype(np.float32))

    def distance(self, features: Any) -> np.ndarray:
        """(N,) distance of each feature vector to its nearest class (under 1 for most
        training cells)."""
        f = np.asarray(features, dtype=np.float32)
        if len(f) == 0:
            return np.empty(0, dtype=np.float32)
        z = f @ self.whiten
        return nearest_distance(z, self.means) / math.sqrt(self.whiten.shape[0])


def nearest_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance of each point to its nearest centre."""
    squared = (
        (points.astype(np.float64) ** 2).sum(axis=1)[:, None]
        + (centres.astype(np.float64) ** 2).sum(axis=1)[None, :]
        - 2.0 * points.astype(np.float64) @ centres.astype(np.float64).T
    )
    return np.sqrt(np.clip(squared.min(axis=1), 0.0, None)).astype(np.float32)


def field_score(distances: Any) -> float | None:
    """A field's familiarity: the median of its cells' distances (a few odd cells, such as a
    white cell taken for a red one, do not make a field unfamiliar). None without cells.
    Of an even count, the lower middle value (as the thresholds were chosen)."""
    values = np.sort(np.asarray(distances, dtype=np.float32).ravel())
    if values.size == 0:
        return None
    return float(values[(values.size - 1) // 2])


def field_colour_descriptor(image: Image.Image) -> np.ndarray:
    """13 numbers describing a field's stain and light: the CIELAB median and standard deviation
    of its cell pixels and of its background pixels (Otsu's threshold on the green channel,
    where the stains absorb most, splits them), and the share of cell pixels. Read at most
    COLOUR_SIDE px across, so the numbers hardly depend on the image size."""
    from skimage.color import rgb2lab
    from skimage.filters import threshold_otsu

    small = image.convert("RGB")
    small.thumbnail((COLOUR_SIDE, COLOUR_SIDE))
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    green = rgb[..., 1]
    dark = green < threshold_otsu(green) if float(green.max() - green.min()) > 1e-3 else None
    if dark is None or dark.all() or not dark.any():  # a flat field: one region, both ways
        dark = np.ones(green.shape, dtype=bool)
        light = dark
    else:
        light = ~dark
    lab = np.asarray(rgb2lab(rgb), dtype=np.float64)
    cells, background = lab[dark], lab[light]
    return np.concatenate(
        [
            np.median(cells, axis=0),
            np.median(background, axis=0),
            [float(dark.mean())],
            cells.std(axis=0),
            background.std(axis=0),
        ]
    )


@dataclass
class FieldColours:
    """Distance of a field's colour descriptor to the training fields' (K-th nearest neighbour,
    each number divided by its spread over the training fields: one stain or several, no
    single-Gaussian assumption)."""

    reference: np.ndarray  # (fields, 13) float32 descriptors of the training fields
    spread: np.ndarray  # (13,) float32: their standard deviation per number
    neighbour: int = COLOUR_NEIGHBOUR

    @classmethod
    def fit(cls, descriptors: np.ndarray, neighbour: int = COLOUR_NEIGHBOUR) -> FieldColours:
        reference = np.asarray(descriptors, dtype=np.float64)
        if reference.ndim != 2 or len(reference) <= neighbour:
            raise ValueError(f"field colours need more than {neighbour} training fields")
        # The sample standard deviation (n - 1), as the thresholds were chosen with.
        spread = np.clip(reference.std(axis=0, ddof=1), 1e-6, None)
        return cls(
            reference=reference.astype(np.float32),
            spread=spread.astype(np.float32),
            neighbour=neighbour,
        )

    def distance(self, descriptor: np.ndarray) -> float:
        d = np.asarray(descriptor, dtype=np.float32).reshape(1, -1) / self.spread
        gaps = np.sqrt((((self.reference / self.spread) - d).astype(np.float64) ** 2).sum(axis=1))
        k = min(self.neighbour, len(gaps))
        return float(np.sort(gaps)[k - 1])


@dataclass
class Calibration:
    temperature: float
    review_threshold: float  # calibrated confidence below which a cell needs review
    target_accuracy: float  # what the threshold was chosen for, on validation
    cell_threshold: float  # a cell farther than this is unlike the training cells
    field_threshold: float  # a field whose median cell is farther is unfamiliar
    familiarity: Familiarity | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # measured when fitted
    # Field colours (None in a version-1 calibration) and the distance beyond which a field's
    # colours are unlike every training field's.
    colours: FieldColours | None = None
    colour_threshold: float | None = None

    def is_unfamiliar_cell(self, distance: float | None) -> bool:
        return distance is not None and distance > self.cell_threshold

    def is_unfamiliar_field(self, score: float | None) -> bool:
        return score is not None and score > self.field_threshold

    def field_colour_score(self, image: Image.Image) -> float | None:
        """The field's colour distance to the training fields; None without field colours."""
        if self.colours is None:
            return None
        return self.colours.distance(field_colour_descriptor(image))

    def is_unfamiliar_colour(self, score: float | None) -> bool:
        threshold = self.colour_threshold
        return score is not None and threshold is not None and score > threshold

    def summary(self) -> dict[str, Any]:
        """What the API reports about the model's calibration (no tensors)."""
        return {
            "temperature": self.temperature,
            "review_threshold": self.review_threshold,
            "target_accuracy": self.target_accuracy,
            "cell_familiarity_threshold": self.cell_threshold,
            "field_familiarity_threshold": self.field_threshold,
            "field_colour_threshold": self.colour_threshold,
        }

    def save(self, model_dir: Path) -> None:
        """calibration.npz, then calibration.json naming it (so a reader never sees the new
        numbers with the old arrays); an older calibration.pt beside it is removed."""
        model_dir = Path(model_dir)
        tensors = model_dir / CALIBRATION_ARRAYS
        if self.familiarity is None:
            raise ValueError("a calibration is saved with its familiarity statistics")
        state = {
            "means": np.asarray(self.familiarity.means, dtype=np.float32),
            "whiten": np.asarray(self.familiarity.whiten, dtype=np.float32),
        }
        if self.colours is not None:
            state |= {
                "colour_reference": np.asarray(self.colours.reference, dtype=np.float32),
                "colour_spread": np.asarray(self.colours.spread, dtype=np.float32),
            }
        staged = model_dir / (CALIBRATION_ARRAYS + ".tmp")
        with open(staged, "wb") as fh:
            np.savez(fh, allow_pickle=False, **state)
        staged.replace(tensors)
        numbers = {k: v for k, v in asdict(self).items() if k not in ("familiarity", "colours")}
        numbers["colour_neighbour"] = None if self.colours is None else self.colours.neighbour
        document = {
            "format_version": FORMAT_VERSION,
            **numbers,
            "tensors_file": CALIBRATION_ARRAYS,
            "tensors_sha256": sha256_file(tensors),
        }
        tmp = model_dir / (CALIBRATION_JSON + ".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(model_dir / CALIBRATION_JSON)
        (model_dir / CALIBRATION_TENSORS).unlink(missing_ok=True)

    @classmethod
    def load(cls, model_dir: Path) -> Calibration | None:
        """The model folder's calibration; None when it has none (an older model: plain
        softmax and the configured threshold). A damaged one is an error, never ignored."""
        model_dir = Path(model_dir)
        path = model_dir / CALIBRATION_JSON
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            tensors = model_dir / str(doc["tensors_file"])
            expected = str(doc["tensors_sha256"])
            numbers = {
                k: float(doc[k])
                for k in (
                    "temperature",
                    "review_threshold",
                    "target_accuracy",
                    "cell_threshold",
                    "field_threshold",
                )
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{path} is not a calibration file: {exc}") from exc
        if not numbers["temperature"] > 0:
            raise ModelFileError(f"{path}: temperature must be positive")
        if not tensors.is_file():
            raise ModelFileError(f"{path} names {tensors.name}, which is missing")
        if sha256_file(tensors) != expected:
            raise ModelFileError(
                f"{tensors} does not match the sha256 in {path.name}: damaged or replaced"
            )
        state = _read_arrays(tensors)
        try:
            familiarity = Familiarity(means=state["means"], whiten=state["whiten"])
        except KeyError as exc:
            raise ModelFileError(f"{tensors} lacks the calibration array {exc}") from exc
        whiten, means = familiarity.whiten, familiarity.means
        if whiten.ndim != 2 or means.ndim != 2 or means.shape[1] != whiten.shape[0]:
            raise ModelFileError(f"{tensors}: class means and whitening matrix do not fit")
        colours, colour_threshold = None, None
        if "colour_reference" in state:
            try:
                colours = FieldColours(
                    reference=state["colour_reference"],
                    spread=state["colour_spread"],
                    neighbour=int(doc["colour_neighbour"]),
                )
                colour_threshold = float(doc["colour_threshold"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelFileError(f"{path}: field colours without their numbers: {exc}") from exc
            if colours.reference.ndim != 2 or colours.reference.shape[1:] != colours.spread.shape:
                raise ModelFileError(f"{tensors}: field colour reference and spread do not fit")
        return cls(
            **numbers,
            familiarity=familiarity,
            figures=dict(doc.get("figures") or {}),
            colours=colours,
            colour_threshold=colour_threshold,
        )


# --- measures, shared by the fitting command and the benchmarks ---------------------------------


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its range, cells, mean confidence and accuracy (the
    reliability diagram's data)."""
    import torch

    edges = torch.linspace(0, 1, bins + 1).tolist()
    rows = []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        n = int(inside.sum())
        rows.append(
            {
                "low": lo,
                "high": hi,
                "cells": n,
                "confidence": float(confidence[inside].mean()) if n else float("nan"),
                "accuracy": float(correct[inside].float().mean()) if n else float("nan"),
            }
        )
    return rows


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> float:
    """ECE: the cell-weighted mean |accuracy - mean confidence| over equal-width confidence bins
    (15, as Guo et al. 2017)."""
    total = max(1, len(confidence))
    return sum(
        row["cells"] / total * abs(row["accuracy"] - row["confidence"])
        for row in reliability_bins(confidence, correct, bins)
        if row["cells"]
    )


def softmax_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of logits / T (float32), averaged over test-time views: logits (views, N, C) or
    (N, C). What the service runs."""
    scaled = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    return probs.mean(axis=0) if probs.ndim == 3 else probs


def calibrated_probabilities(logits: Any, temperature: float) -> Any:
    """`softmax_probabilities` of numpy logits, or of torch logits as a torch tensor (the
    fitting commands compute in torch): one computation for both."""
    if isinstance(logits, np.ndarray):
        return softmax_probabilities(logits, temperature)
    import torch

    values = logits.detach().float().cpu().numpy()
    return torch.from_numpy(softmax_probabilities(values, temperature))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the negative log-likelihood of `labels` (a fine log-spaced grid from 0.25
    to 8, then refined: one parameter needs no optimiser)."""
    import torch

    def nll(t: float) -> float:
        probs = calibrated_probabilities(logits, t)
        picked = probs[torch.arange(len(labels)), labels].clamp_min(1e-12)
        return float(-picked.log().mean())

    grid = torch.logspace(math.log10(0.25), math.log10(8.0), 121).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.03, best * 1.03, 41).tolist()
    return float(min(fine, key=nll))


def choose_review_threshold(
    confidence: torch.Tensor, correct: torch.Tensor, target: float
) -> float:
    """The lowest confidence threshold at which the cells at or above it are right at `target`
    or better (so the most cells pass unflagged); 1.0 when no threshold reaches it."""
    import torch

    order = torch.argsort(confidence, descending=True)
    conf, ok = confidence[order], correct[order].float()
    running = torch.cumsum(ok, 0) / torch.arange(1, len(ok) + 1)
    good = (running >= target).nonzero().flatten()
    if len(good) == 0:
        return 1.0
    # Ties: the threshold is a confidence, so every cell at that value passes with it.
    return float(conf[int(good.max())])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The calibration arrays of a hash-checked file, as float32: calibration.npz with plain
    numpy (no pickle), or an older calibration.pt with torch (tensors only)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: np.asarray(arrays[k], dtype=np.float32) for k in arrays.files}
        except Exception as exc:
            raise ModelFileError(f"cannot read {path} as calibration arrays: {exc}") from exc
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ModelFileError(
            f"{path} is in torch's format and this serving install has no torch: rewrite it as "
            f"{CALIBRATION_ARRAYS} with `python -m training export-onnx --model {path.parent}` "
            "(on a training install)"
        )
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    except Exception as exc:
        raise ModelFileError(f"cannot read {path} as calibration tensors: {exc}") from exc
