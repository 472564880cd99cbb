"""A trained run's detector published under models/, its card and sha256 checked."""

from __future__ import annotations

from pathlib import Path

from core.detect.learned import (
    DETECTOR_STATE,
)
from training.errors import DataError
from training.onnxgraph import write_graph


def export_detector(
    run_dir: Path, models_dir: Path, name: str, notes: list[str], overwrite: bool = False
) -> Path:
    """Publish a run's detector under models_dir/name (state dict + card, hash checked first)."""
    import shutil

    from core.detect.learned import verified_detector_path
    from core.modelcard import ModelFileError

    source = Path(run_dir) / "detector"
    try:
        state, card = verified_detector_path(source)
    except ModelFileError as exc:
        raise DataError(f"{run_dir} holds no verified detector: {exc}") from exc
    dest = Path(models_dir) / name
    if dest.exists():
        if not overwrite:
            raise DataError(f"{dest} exists: pass --overwrite to replace it")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(state, dest / DETECTOR_STATE)
    for extra in ("history.json",):
        if (Path(run_dir) / extra).is_file():
            shutil.copy2(Path(run_dir) / extra, dest / extra)
    card.name = name
    card.state_file = DETECTOR_STATE
    card.notes = [*card.notes, *notes]
    card.onnx_file = card.onnx_sha256 = None  # written again below, from the verified state
    card.save(dest)
    add_detector_onnx(dest)
    verified_detector_path(dest)
    return dest


# The ONNX graph must give torch's heatmap probabilities and sizes within these, checked at
# export on a probe field of two sizes.
ONNX_HEAT_TOLERANCE = 1e-4
ONNX_SIZE_TOLERANCE = 1e-3


def add_detector_onnx(model_dir: Path) -> Path:
    """Write detector.onnx (any input size) beside the verified state dict of `model_dir`, prove
    that ONNX Runtime gives the torch network's heatmaps and sizes within tolerance on two probe
    sizes, then name it in the card with its sha256. Refused (DataError) otherwise."""
    import numpy as np
    import torch

    from core.detect.learned import DETECTOR_ONNX, CellDetector, to_input
    from core.modelcard import sha256_file

    detector = CellDetector.load(model_dir, engine="torch")
    network, card = detector.network, detector.card
    assert network is not None  # engine="torch"
    rng = np.random.default_rng(0)
    probes = [
        torch.from_numpy(to_input(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))[0])
        for h, w in ((200, 260), (96, 128))
    ]
    staging = Path(model_dir) / f".{DETECTOR_ONNX}.partial"
    axes, out_axes = {0: "n", 2: "height", 3: "width"}, {0: "n", 2: "rows", 3: "cols"}
    session = write_graph(
        network, probes[0], staging, {"image": axes}, {"heat": out_axes, "size": out_axes}
    )
    for x in probes:
        with torch.inference_mode():
            heat, size = network(x)
        got_heat, got_size = session.run(["heat", "size"], {"image": x.numpy()})
        heat_gap = float(
            (torch.sigmoid(torch.from_numpy(got_heat)) - torch.sigmoid(heat)).abs().max()
        )
        size_gap = float((torch.from_numpy(got_size) - size).abs().max())
        if heat_gap > ONNX_HEAT_TOLERANCE or size_gap > ONNX_SIZE_TOLERANCE:
            staging.unlink()
            raise DataError(
                f"{DETECTOR_ONNX} gives other outputs than torch (heatmap gap {heat_gap:.2e}, "
                f"size gap {size_gap:.2e})"
            )
    path = Path(model_dir) / DETECTOR_ONNX
    staging.replace(path)
    card.onnx_file, card.onnx_sha256 = DETECTOR_ONNX, sha256_file(path)
    card.save(Path(model_dir))
    return path
