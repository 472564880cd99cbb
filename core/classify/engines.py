"""How the classifier's network runs. Both engines take a normalised float32 batch (N, 3, S, S)
and give numpy logits and the features the last layer reads (what familiarity measures):

- `OnnxEngine`: ONNX Runtime on the model's `model.onnx` (hash-checked like the state file),
  several times faster than torch on a CPU (bench/bench_engines.py), and needs no torch: a
  serving install has none;
- `TorchEngine`: the torch network itself, for models exported before model.onnx existed, for
  a GPU, and where RBC_ENGINE=torch asks for it (the training install).

Heatmaps need gradients: they always run on the torch network (core/classify/gradcam.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.blas import one_blas_thread
from core.onnxsession import onnx_runtime_name, onnx_session

if TYPE_CHECKING:
    from torch import nn

ENGINES = ("auto", "onnx", "torch")


class EngineError(ValueError):
    """The engine asked for cannot run this model here; the message says why."""


class Engine(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, classes), features (N, D)) of a normalised batch."""
        ...


class TorchEngine:
    def __init__(self, model: nn.Sequential, device: str) -> None:
        import torch
        from torch import nn

        body, head = model[0], model[1]
        assert isinstance(head, nn.Sequential)  # build_head's layers; the last one is linear
        self.model = model
        self.body, self.features_of, self.last = body, head[:-1], head[-1]
        self.device = device
        self.name = f"torch {torch.__version__.split('+')[0]}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            features = self.features_of(self.body(x)).float()
            return self.last(features).cpu().numpy(), features.cpu().numpy()


class OnnxEngine:
    """An ONNX Runtime session on the CPU; `run` is safe from many threads."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        # Its threads keep spinning between runs: the batch endpoint was slower without.
        self.session = onnx_session(path, threads)
        self.input = self.session.get_inputs()[0].name
        self.name = onnx_runtime_name()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(
            ["logits", "features"], {self.input: np.ascontiguousarray(batch, dtype=np.float32)}
        )
        return logits, features


def choose_engine(
    choice: str,
    network: Callable[[], nn.Sequential],
    device: str,
    onnx_path: Path | None,
    threads: int = 0,
) -> Engine:
    """The engine `choice` names: "onnx" needs the model's model.onnx, onnxruntime and the CPU;
    "auto" takes ONNX Runtime where it can and torch elsewhere (a GPU, an older model).
    `network` loads the torch network, and is called only for the torch engine."""
    if choice not in ENGINES:
        raise EngineError(f"engine {choice!r} is not one of {', '.join(ENGINES)}")
    if choice == "torch":
        return _torch_engine(network, device, threads)
    why_not = _why_not_onnx(device, onnx_path)
    if why_not is None:
        assert onnx_path is not None
        return OnnxEngine(onnx_path, threads)
    if choice == "onnx":
        raise EngineError(f"RBC_ENGINE=onnx, but {why_not}")
    return _torch_engine(network, device, threads, why_not)


def _torch_engine(
    network: Callable[[], nn.Sequential], device: str, threads: int, why: str = ""
) -> Engine:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        reason = f"{why}, and " if why else ""
        raise EngineError(
            f"{reason}the torch engine needs torch, which this serving install lacks: install "
            "the training extras (scripts/install.sh --train)"
        )
    import torch

    if device == "cpu":
        one_blas_thread()
    if threads:
        torch.set_num_threads(threads)
    return TorchEngine(network(), device)


def _why_not_onnx(device: str, onnx_path: Path | None) -> str | None:
    if device != "cpu":
        return f"the model runs on {device}: ONNX Runtime is used on the CPU only"
    if onnx_path is None:
        return (
            "the model has no model.onnx: add it with "
            "`python -m training export-onnx --model <folder>`"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    return None
