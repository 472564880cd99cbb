"""What a cell detector returns for one field, and what it must offer: the learned detector
(core.detect.learned) and the classical segmentation (core.detect.classical) both honour
`Detector`, so core.smear.analysis has one body for both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# The kinds of object a detector tells apart, in the order of the learned detector's heatmaps.
KINDS = ("red_cell", "white_cell", "platelet")


@dataclass
class Detected:
    kind: str  # "red_cell", "white_cell" or "platelet"
    x: float  # centre, pixels of the image given
    y: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float  # the detector's confidence (1.0 for the classical segmentation)
    at_border: bool
    region: int = 0  # its id in FieldDetection.regions, when the detector outlines regions


@dataclass
class FieldDetection:
    objects: list[Detected]  # in the pixels of the image given
    microns_per_pixel: float | None  # the scale used: given, estimated, or None (not known)
    scale_estimated: bool
    # When estimated: the candidate scales tried and the red cells each found.
    scale_search: list[tuple[float, int]] = field(default_factory=list)
    # Red-cell peaks that held a nucleus (core/detect/nucleus.py) and became white cells.
    nucleated: int = 0
    # Nuclei that no detection covered, reported as white cells (core/detect/nucleus.py).
    free_nuclei: int = 0
    # core/detect/focus.py at the working scale, the detector's threshold, and whether the
    # field is under it (a defocused field: red cells missed). None: not measured.
    sharpness: float | None = None
    out_of_focus: bool = False
    focus_threshold: float | None = None
    # Objects found but neither red cells nor reported (the classical segmentation's dark
    # regions: white cells, fibres, dirt).
    unreported: int = 0
    # A region id per pixel at `regions_factor` x the given size (0 = background), when the
    # detector segments: the overlay then draws each cell's true outline, not an ellipse.
    regions: np.ndarray | None = field(default=None, repr=False)
    regions_factor: float = 1.0

    def of_kind(self, kind: str) -> list[Detected]:
        return [o for o in self.objects if o.kind == kind]


class Detector(Protocol):
    """A cell detector: finds the objects of an (H, W, 3) uint8 field. Raises
    core.detect.classical.NoCellsError when the field holds nothing to find."""

    @property
    def name(self) -> str:
        """How results name it: "classical" or "learned:<card name>"."""
        ...

    @property
    def stage(self) -> str:
        """Its step's name in a result's timings ("detect", "segment")."""
        ...

    def detect(self, rgb: np.ndarray, microns_per_pixel: float | None = None) -> FieldDetection:
        """The field's objects; `microns_per_pixel` is its scale when known."""
        ...
