"""A learned detector of red cells, white cells and platelets in a smear field.

The network (`CentreNet`) puts a small feature pyramid on an EfficientNet-Lite body and predicts,
at a quarter of the input's resolution, one centre heatmap per kind of object (red cell, white
cell, platelet) and each object's box size: a cell is a peak of its kind's heatmap, so touching
cells are two peaks, and a white cell is never a red cell. It works at one pixel scale
(`DetectorCard.microns_per_pixel`, a red cell ~20 px across): an image is resampled to it from
the scale given, or from a scale estimated from the field's own red cells (`CellDetector`).

Trained by `python -m training train-detector` (training/detect/); loaded here as the
classifier is: the card's sha256 checked before anything is read. On a CPU the card's
detector.onnx runs on ONNX Runtime and everything around it is numpy, so a serving install needs
no torch; the torch network (core/detect/network.py) serves a GPU or an older card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy.ndimage import maximum_filter
from scipy.special import expit

from core.blas import one_blas_thread
from core.detect.field import KINDS, Detected, FieldDetection
from core.detect.focus import sharpness
from core.detect.nucleus import (
    FREE_NUCLEUS_MIN_UM2,
    SHIPPED_RULE,
    NucleusRule,
    nuclear_regions,
    nucleated,
)
from core.modelcard import ModelFileError, verified_file
from core.onnxsession import onnx_runtime_name, onnx_session

if TYPE_CHECKING:
    from core.detect.network import CentreNet

DETECTOR_CARD = "detector_card.json"
DETECTOR_STATE = "detector_state.pt"
DETECTOR_ONNX = "detector.onnx"
STRIDE = 4
# The input normalisation the detector is trained and served with: torchvision's ImageNet
# statistics. (The Lite body's own pretraining used (x - 127) / 128,
# core.backbones.LITE_STATS; the whole network is fine-tuned, and a change here means
# training the detector again.)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# A normal red cell is about this wide (the assumption behind an estimated scale).
NORMAL_RED_CELL_UM = 7.5
# A candidate rule, measured and not shipped (docs/detection.md, "A lower threshold for small
# red-cell peaks"): a red-cell peak whose box is under SMALL_RED_CELL_UM across (the mean of its
# sides) kept from SMALL_RED_CELL_THRESHOLD up, larger ones from the card's red-cell threshold.
# The heatmap rises less at fragments: at the card's threshold the detector finds 0.71 of
# Chula's test schistocytes. Chosen by research/small_cell_threshold.py on validation fields (the
# most schistocytes, 0.93, with no source's precision more than a point lower); on the test
# fields it found 0.80 of them but cost bcd's precision 1.5 points, over the bar set
# beforehand. `CellDetector(small_red=...)`, `--small-red 0.3,6.5`. Never used by the scale
# search.
SMALL_RED_CELL_UM = 6.5
SMALL_RED_CELL_THRESHOLD = 0.30


def parse_small_red(value: str) -> tuple[float, float]:
    """ "THRESHOLD,UM" (the --small-red option) -> (threshold, um across); ValueError else."""
    try:
        threshold, across = (float(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"--small-red takes THRESHOLD,UM (e.g. 0.3,6.5), not {value!r}") from None
    return threshold, across


@dataclass
class DetectorCard:
    name: str
    backbone: str
    width: int
    microns_per_pixel: float  # the working scale of the network's input
    thresholds: dict[str, float]  # per kind: a heatmap peak above it is an object
    # Predicted over labelled red-cell box side on validation fields (the scale estimate
    # divides it out).
    size_calibration: float = 1.0
    state_file: str = DETECTOR_STATE
    state_sha256: str = ""
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    notes: list[str] = field(default_factory=list)
    # The rules around the network, tuned on validation fields (docs/detection.md). A card from
    # before they were kept here gets the values the service ran with then.
    # A field whose sharpness (core/detect/focus.py) is under this is called out of focus: the
    # highest value that calls at most 2 % of any source's validation fields so as they are;
    # it calls 92-100 % of them so when blurred by 0.75 um and more, where red cells go missing
    # (research/focus_probe.py, research/results/detection/focus-probe.json).
    focus_threshold: float = 0.118
    # A red cell whose box comes this close to the image's edge (in the field's microns) is
    # taken to be cut by it: set aside, not counted. The boxes of cut cells often stop short of
    # the edge; 1 um sets aside 94-98 % of them and 12-19 % of whole cells that close, the best
    # trade on txl-pbc's validation fields (research/border_margin.py; 2 px alone: 59-66 %).
    border_margin_um: float = 1.0
    # The nucleus rule (core/detect/nucleus.py, NucleusRule.key) and the least area of a free
    # nucleus; None turns each off.
    nucleus_rule: str | None = SHIPPED_RULE.key() if SHIPPED_RULE else None
    free_nucleus_um2: float | None = FREE_NUCLEUS_MIN_UM2

    # The network as an ONNX graph (detector.onnx: heatmaps and sizes, any input size), which
    # ONNX Runtime runs several times faster on a CPU; None on cards from before it existed.
    onnx_file: str | None = None
    onnx_sha256: str | None = None

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / DETECTOR_CARD
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> DetectorCard:
        path = Path(model_dir) / DETECTOR_CARD
        if not path.is_file():
            raise ModelFileError(
                f"no detector card at {path}: is {model_dir} an exported detector?"
            )
        try:
            raw = json.loads(path.read_text())
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ModelFileError(f"detector card {path} is malformed: {exc}") from exc


def verified_detector_onnx(model_dir: Path) -> Path | None:
    """The detector's ONNX graph, once its sha256 matches the card's; None when it has none."""
    card = DetectorCard.load(Path(model_dir))
    if not card.onnx_file or not card.onnx_sha256:
        return None
    return verified_file(Path(model_dir), card.onnx_file, card.onnx_sha256, "detector card")


def verified_detector_path(model_dir: Path) -> tuple[Path, DetectorCard]:
    """The detector's state dict, once its sha256 matches the card's (before it is read)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(f"detector directory {model_dir} does not exist")
    card = DetectorCard.load(model_dir)
    return verified_file(model_dir, card.state_file, card.state_sha256, "detector card"), card


def decode(
    heat: np.ndarray,
    size: np.ndarray,
    thresholds: dict[str, float],
    max_objects: int = 2000,
    small_red: tuple[float, float] | None = None,
) -> list[tuple[int, float, float, float, float, float]]:
    """Peaks of one image's heatmaps (logits (K, h, w), sizes (2, h, w)) -> (kind index, x, y,
    width, height, score) in input pixels, strongest first. A peak is a local maximum of its
    3x3 neighbourhood above its kind's threshold, and not near the centre of a stronger object of
    another kind (one object, one kind: a red cell's faint "white cell" twin is the same cell).
    `small_red` (threshold, side in input pixels): a red-cell peak whose box is smaller than
    that side (the mean of its sides) is kept from that lower threshold up."""
    heat = np.asarray(heat, dtype=np.float32)
    size = np.asarray(size, dtype=np.float32)
    prob = expit(heat).astype(np.float32, copy=False)
    # A 3x3 max pool per kind, the outside counting as -inf (torch's max_pool2d with padding).
    pooled = maximum_filter(prob, size=(1, 3, 3), mode="constant", cval=-np.inf)
    peaks = (prob == pooled) & (prob > 0)
    levels = {k: thresholds.get(k, 0.5) for k in KINDS}
    red_cut = levels["red_cell"]
    if small_red is not None:
        levels["red_cell"] = min(red_cut, small_red[0])
    cut = np.asarray([levels[k] for k in KINDS], dtype=np.float32)[:, None, None]
    kind, ys, xs = np.nonzero(peaks & (prob >= cut))
    scores = prob[kind, ys, xs]
    order = np.argsort(-scores, kind="stable")[:max_objects]
    wh = np.exp(np.clip(size, -4, 6)) * STRIDE
    out: list[tuple[int, float, float, float, float, float]] = []
    # Kept objects by coarse grid square, so each peak is compared with its neighbours only.
    grid: dict[tuple[int, int], list[int]] = {}
    cell = 64.0  # input pixels, more than any object's half side at the working scale
    for o in order.tolist():
        k, y, x = int(kind[o]), int(ys[o]), int(xs[o])
        cx, cy = (x + 0.5) * STRIDE, (y + 0.5) * STRIDE
        w, h = float(wh[0, y, x]), float(wh[1, y, x])
        if k == 0 and small_red is not None and scores[o] < red_cut and (w + h) / 2 >= small_red[1]:
            continue  # under the red-cell threshold and not small: not a fragment
        gx, gy = int(cx // cell), int(cy // cell)
        near = [
            i for dx in (-1, 0, 1) for dy in (-1, 0, 1) for i in grid.get((gx + dx, gy + dy), ())
        ]
        if any(
            out[i][0] != k
            and math.hypot(out[i][1] - cx, out[i][2] - cy) < (out[i][3] + out[i][4]) / 4
            for i in near
        ):
            continue
        grid.setdefault((gx, gy), []).append(len(out))
        out.append((k, cx, cy, w, h, float(scores[o])))
    return out


def to_input(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 -> normalised float32 (1, 3, H', W') padded with the image's median
    colour to a multiple of 32; and the unpadded (H, W). (A torch network takes
    `torch.from_numpy` of it.)"""
    height, width = rgb.shape[:2]
    pad_h, pad_w = (-height) % 32, (-width) % 32
    if pad_h or pad_w:
        fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
        padded = np.empty((height + pad_h, width + pad_w, 3), dtype=np.uint8)
        padded[:] = fill
        padded[:height, :width] = rgb
        rgb = padded
    x = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0
    mean = np.asarray(MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(((x - mean) / std)[None]), (height, width)


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1.0) < 1e-3:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    filt = Image.Resampling.BILINEAR if factor > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(rgb).resize(size, filt))


def enclosing(
    boxes: Sequence[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    """The smallest box holding all of `boxes` (the pieces of one white cell)."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def set_apart_nucleated(
    rgb: np.ndarray, objects: list[Detected], microns_per_pixel: float, rule: NucleusRule
) -> tuple[list[Detected], int]:
    """Red cells that hold a nucleus become white cells (a white cell the network did not
    recognise); one inside a white cell already found is a part of it and goes, and
    nucleated pieces closer than a red cell's width (the lobes of one neutrophil) become
    one white cell. Red cells at the border are left as they are: they are not counted, and a
    sliver at the image's edge is no cell to judge (its colour is often the edge's); they do
    count towards the field's red-cell colour (a zoomed field has few cells clear of the edge).
    Returns the objects and how many red cells were moved."""
    every_red = [o.box for o in objects if o.kind == "red_cell"]
    red = [o for o in objects if o.kind == "red_cell" and not o.at_border]
    flags = nucleated(rgb, [o.box for o in red], rule, reference=every_red)
    moved = [o for o, flag in zip(red, flags, strict=True) if flag]
    if not moved:
        return objects, 0
    kept = [o for o in objects if not (o.kind == "red_cell" and any(o is m for m in moved))]
    whites = [o for o in kept if o.kind == "white_cell"]
    reach = NORMAL_RED_CELL_UM / microns_per_pixel
    pieces: list[list[Detected]] = []
    for o in sorted(moved, key=lambda o: -o.score):
        if any(w.box[0] <= o.x <= w.box[2] and w.box[1] <= o.y <= w.box[3] for w in whites):
            continue
        near = next(
            (p for p in pieces if any(math.hypot(o.x - q.x, o.y - q.y) < reach for q in p)),
            None,
        )
        if near is None:
            pieces.append([o])
        else:
            near.append(o)
    for piece in pieces:
        box = enclosing([o.box for o in piece])
        kept.append(
            Detected(
                "white_cell",
                (box[0] + box[2]) / 2,
                (box[1] + box[3]) / 2,
                box,
                max(o.score for o in piece),
                any(o.at_border for o in piece),
            )
        )
    return kept, len(moved)


def add_free_nuclei(
    rgb: np.ndarray,
    objects: list[Detected],
    microns_per_pixel: float,
    rule: NucleusRule,
    min_area_um2: float,
) -> tuple[list[Detected], int]:
    """Regions of nuclear pixels outside every detected object become white cells (score 0: no
    network found them): a white cell of a stain the network never saw can go unseen by it,
    while its nucleus is as dark and blue as any. As in `set_apart_nucleated`, pieces closer
    than a red cell's width (the lobes of one neutrophil) are one white cell, and a piece within
    that reach of a white cell already found is a part of it; a white cell needs one region of
    `min_area_um2` at least. Returns the objects and how many were added."""
    reference = [o.box for o in objects if o.kind == "red_cell"]
    regions = nuclear_regions(rgb, [o.box for o in objects], reference, rule, microns_per_pixel)
    reach = NORMAL_RED_CELL_UM / microns_per_pixel
    whites = [o.box for o in objects if o.kind == "white_cell"]

    def near(box: tuple[float, float, float, float], other: tuple[float, ...]) -> bool:
        """Whether the boxes come within `reach` of each other."""
        dx = max(other[0] - box[2], box[0] - other[2], 0.0)
        dy = max(other[1] - box[3], box[1] - other[3], 0.0)
        return math.hypot(dx, dy) < reach

    pieces: list[list[tuple[tuple[float, float, float, float], float]]] = []
    for box, area in sorted(regions, key=lambda r: -r[1]):
        if any(near(box, w) for w in whites):
            continue
        joined = next((p for p in pieces if any(near(box, q) for q, _ in p)), None)
        if joined is None:
            pieces.append([(box, area)])
        else:
            joined.append((box, area))
    height, width = rgb.shape[:2]
    added = []
    for piece in pieces:
        if max(area for _, area in piece) < min_area_um2:
            continue  # specks: a white cell's nucleus has one region this large at least
        x0, y0, x1, y1 = enclosing([b for b, _ in piece])
        border = x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height
        added.append(
            Detected("white_cell", (x0 + x1) / 2, (y0 + y1) / 2, (x0, y0, x1, y1), 0.0, border)
        )
    return objects + added, len(added)


@dataclass(frozen=True)
class ScaleTry:
    """The network run on a field assumed to be at `candidate` um per pixel."""

    candidate: float
    implied: float | None  # the scale its red cells' median size implies; None under three
    count: int  # red cells found
    total: float  # the sum of their scores


def start_scale(tries: Sequence[ScaleTry]) -> float | None:
    """Where the scale search starts. Each candidate that found three red cells points to the
    candidate nearest the scale its cells imply; following the pointers, every candidate ends at
    an attractor (a candidate pointing to itself, or the best of a cycle). The attractor whose
    basin found the most red cells most confidently (the sum of their scores) wins: near the
    true scale the network finds cells, since it learnt near its working scale only, and from a
    candidate up to a few steps off they imply the true scale, so it draws many candidates. A
    wrong scale can agree with itself (a sharp field enlarged several times, where a network
    trained on blurred cells finds "cells" of the size it expects) but draws little else: taking
    the single candidate with the most cells took that one (research/scale_search.py). None where
    no candidate found three red cells."""
    usable = {t.candidate: t for t in tries if t.implied is not None}
    if not usable:
        return None

    def pointed(candidate: float) -> float:
        implied = usable[candidate].implied
        assert implied is not None
        return min(usable, key=lambda c: abs(math.log(c / implied)))

    basins: dict[float, float] = {}
    for candidate in sorted(usable):
        path = [candidate]
        while (step := pointed(path[-1])) not in path:
            path.append(step)
        attractor = max(path[path.index(step) :], key=lambda c: usable[c].total)
        basins[attractor] = basins.get(attractor, 0.0) + usable[candidate].total
    return max(basins, key=lambda a: basins[a])


class CellDetector:
    """A loaded detector: `detect(rgb, microns_per_pixel)`; thread-safe (inference only). It
    runs detector.onnx on ONNX Runtime (`onnx_path`) or the torch `network`."""

    # Scales tried when none is given (um per pixel): from a fine camera behind a 100x objective
    # to Chula's 0.19 and beyond, in steps of 1.5x (the network is trained over 0.7x-1.4x).
    CANDIDATE_SCALES = (0.04, 0.06, 0.09, 0.135, 0.2, 0.3, 0.45)
    # The scale search looks at the middle of the field only, at most this many input pixels
    # a side: enough red cells to measure, a fraction of the cost on a large field.
    SEARCH_SIDE = 288
    # The least margin to the image's edge under which a red cell is cut by it (the card's
    # border_margin_um is the tuned one).
    BORDER_MARGIN_PX = 2.0
    stage = "detect"  # its step in a result's timings

    def __init__(
        self,
        network: CentreNet | None,
        card: DetectorCard,
        device: str = "cpu",
        small_red: tuple[float, float] | None = None,
        onnx_path: Path | None = None,
    ) -> None:
        if network is None and onnx_path is None:
            raise ValueError("a detector runs either detector.onnx or the torch network")
        self.network = network
        if network is not None:
            network.eval().to(device).requires_grad_(False)
        self.card = card
        self.device = device
        # ONNX Runtime where the card's detector.onnx is given (on the CPU), else torch.
        # Its idle threads sleep between runs: the scale search runs the network ten times with
        # Python work between, which a spinning pool slowed by a quarter on 2 cores. No arena:
        # it kept the largest field's buffers for good (peak 303 -> 279 MiB, after the last
        # request 286 -> 245, bench/bench_service_memory.py), at no cost to a field's time.
        self.onnx_path = onnx_path
        self.session = (
            None if onnx_path is None else onnx_session(onnx_path, spinning=False, arena=False)
        )
        if self.session is None:
            import torch

            if device == "cpu":
                one_blas_thread()
            self.engine_name = f"torch {torch.__version__.split('+')[0]}"
        else:
            self.engine_name = onnx_runtime_name()
        # The tuned rules come from the card; a probe may change them on a loaded detector.
        # A red-cell peak that holds a nucleus is a white cell (None: trust the network).
        self.nucleus_rule = NucleusRule.from_key(card.nucleus_rule) if card.nucleus_rule else None
        # A nucleus that no detection covers, at least this large, is a white cell the network
        # missed (None: none is looked for; needs the nucleus rule's colours).
        self.free_nucleus_um2 = card.free_nucleus_um2
        # (threshold, um across): red-cell peaks smaller than that are kept from that threshold
        # up; None (the default): the card's threshold for all. The candidate rule,
        # (SMALL_RED_CELL_THRESHOLD, SMALL_RED_CELL_UM), is not shipped (docs/detection.md).
        self.small_red = small_red

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu", engine: str = "auto") -> CellDetector:
        """The verified detector of `model_dir`; `engine` as RBC_ENGINE: "auto" runs its
        detector.onnx on ONNX Runtime where the card has one and the device is the CPU, "torch"
        never, "onnx" always (ModelFileError where it cannot)."""
        # The state file is hash-checked whichever engine runs (as the classifier's).
        path, card = verified_detector_path(model_dir)
        onnx_path = None
        if engine != "torch" and device == "cpu":
            onnx_path = verified_detector_onnx(model_dir)
        if engine == "onnx" and onnx_path is None:
            raise ModelFileError(
                f"RBC_ENGINE=onnx, but the detector of {model_dir} has no detector.onnx on the "
                "CPU: add it with `python -m training export-onnx --model <folder>`"
            )
        if onnx_path is not None:
            return cls(None, card, device, onnx_path=onnx_path)
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ModelFileError(
                f"the detector of {model_dir} has no detector.onnx, and its torch network needs "
                "torch, which this serving install lacks: add the graph with `python -m training "
                "export-onnx --model <folder>` (on a training install)"
            )
        import torch

        from core.detect.network import CentreNet

        try:
            state = torch.load(path, map_location=device, weights_only=True)
            network = CentreNet(card.backbone, card.width)
            network.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ModelFileError(f"cannot load the detector weights {path}: {exc}") from exc
        return cls(network, card, device, onnx_path=onnx_path)

    @property
    def name(self) -> str:
        return f"learned:{self.card.name}"

    def run(
        self, rgb: np.ndarray, small_red: bool = False
    ) -> list[tuple[int, float, float, float, float, float]]:
        """Peaks of an image already at the working scale (input pixels); with `small_red`,
        small red-cell peaks are kept from the detector's lower threshold for them."""
        x, _ = to_input(rgb)
        if self.session is not None:
            heat, size = self.session.run(["heat", "size"], {"image": x})
        else:
            heat, size = self._run_torch(x)
        small = None
        if small_red and self.small_red is not None:
            threshold, across_um = self.small_red
            small = (threshold, across_um / self.card.microns_per_pixel)
        return decode(heat[0], size[0], self.card.thresholds, small_red=small)

    def _run_torch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        assert self.network is not None
        with torch.inference_mode():
            heat, size = self.network(torch.from_numpy(x).to(self.device))
        return heat.float().cpu().numpy(), size.float().cpu().numpy()

    def estimate_scale(self, rgb: np.ndarray) -> tuple[float, list[tuple[float, int]]]:
        """The field's scale from its own red cells, taking a red cell to be NORMAL_RED_CELL_UM
        across. The network runs at each candidate scale (`scale_tries`); `start_scale` picks
        where to start (the attractor of the most red cells); from there, each run implies a
        scale from the median red-cell size it measured, and running again at the implied scale
        converges on the field's scale (the network's size errors shrink near its working
        scale). Each run looks at the middle SEARCH_SIDE x SEARCH_SIDE input pixels only."""
        tries = self.scale_tries(rgb)
        start = start_scale(tries)
        tried = [(t.candidate, t.count) for t in tries]
        if start is None:
            return self.card.microns_per_pixel / 2, tried  # no red cells anywhere: Chula's
        return self.refine_scale(rgb, start), tried

    def scale_tries(self, rgb: np.ndarray) -> list[ScaleTry]:
        """The network run at each of CANDIDATE_SCALES."""
        return [self.try_scale(rgb, candidate) for candidate in self.CANDIDATE_SCALES]

    def refine_scale(self, rgb: np.ndarray, scale: float, runs: int = 3) -> float:
        """Run again at the implied scale until it moves by under 2 % (at most `runs` times)."""
        for _ in range(runs):
            implied = self.try_scale(rgb, scale).implied
            if implied is None or abs(implied / scale - 1) < 0.02:
                break
            scale = implied
        return scale

    def search_window(self, rgb: np.ndarray, candidate: float) -> np.ndarray:
        """The middle of the field, resampled to the working scale as if at `candidate`."""
        factor = candidate / self.card.microns_per_pixel
        side = round(self.SEARCH_SIDE / factor)  # in the field's pixels
        height, width = rgb.shape[:2]
        top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
        return resample(rgb[top : top + side, left : left + side], factor)

    def try_scale(self, rgb: np.ndarray, candidate: float) -> ScaleTry:
        """Run at `candidate` um per pixel on the middle of the field."""
        work = self.card.microns_per_pixel
        peaks = self.run(self.search_window(rgb, candidate))
        red = [((w + h) / 2, score) for k, _, _, w, h, score in peaks if k == 0]
        total = float(sum(score for _, score in red))
        if len(red) < 3:
            return ScaleTry(candidate, None, len(red), total)
        # A red cell measured `median` input pixels at the working scale, calibrated.
        cell = float(np.median([s for s, _ in red])) / (self.card.size_calibration or 1.0)
        implied = candidate * NORMAL_RED_CELL_UM / (cell * work)
        return ScaleTry(candidate, implied, len(red), total)

    def detect(self, rgb: np.ndarray, microns_per_pixel: float | None = None) -> FieldDetection:
        search: list[tuple[float, int]] = []
        estimated = microns_per_pixel is None
        if microns_per_pixel is None:
            microns_per_pixel, search = self.estimate_scale(rgb)
        factor = microns_per_pixel / self.card.microns_per_pixel
        height, width = rgb.shape[:2]
        objects = []
        m = max(self.BORDER_MARGIN_PX, self.card.border_margin_um / microns_per_pixel)
        work = resample(rgb, factor)
        focus = sharpness(work)
        for k, x, y, w, h, score in self.run(work, small_red=True):
            cx, cy, bw, bh = x / factor, y / factor, w / factor, h / factor
            x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
            x1, y1 = min(float(width), cx + bw / 2), min(float(height), cy + bh / 2)
            if not (0 <= cx < width and 0 <= cy < height):
                continue  # a peak in the padding
            border = x0 <= m or y0 <= m or x1 >= width - m or y1 >= height - m
            objects.append(Detected(KINDS[k], cx, cy, (x0, y0, x1, y1), score, border))
        moved = added = 0
        if self.nucleus_rule is not None:
            objects, moved = set_apart_nucleated(rgb, objects, microns_per_pixel, self.nucleus_rule)
            if self.free_nucleus_um2 is not None:
                objects, added = add_free_nuclei(
                    rgb, objects, microns_per_pixel, self.nucleus_rule, self.free_nucleus_um2
                )
        return FieldDetection(
            objects,
            microns_per_pixel,
            estimated,
            search,
            moved,
            free_nuclei=added,
            sharpness=focus,
            out_of_focus=focus < self.card.focus_threshold,
            focus_threshold=self.card.focus_threshold,
        )
