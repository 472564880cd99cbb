"""A trained network written as an ONNX graph, for ONNX Runtime to serve (both models' exports:
training/classify/export.py, training/detect/export.py)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 17


def write_graph(
    network: nn.Module,
    sample: torch.Tensor,
    path: Path,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
) -> Any:
    """Trace `network` on `sample` into `path` (named inputs and outputs with their dynamic axes)
    and return an ONNX Runtime session on it, for the caller to check against torch."""
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            network, (sample,), str(path), input_names=list(inputs),
            output_names=list(outputs), opset_version=ONNX_OPSET, dynamo=False,
            dynamic_axes={**inputs, **outputs},
        )  # fmt: skip
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
