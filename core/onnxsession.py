"""An ONNX Runtime session on the CPU, as both models' graphs are served (the classifier's in
core/classify/engines.py, the detector's in core/detect/learned.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.blas import one_blas_thread


def onnx_session(path: Path, threads: int = 0, spinning: bool = True, arena: bool = True) -> Any:
    """A session on `path` with every graph optimisation and no memory pattern; `threads` 0 is
    one per core. Without `spinning`, idle threads sleep after a run instead of spinning: on 2
    cores a spinning pool takes the CPU from the Python work between runs. Without `arena`,
    buffers come from malloc and go back after each run instead of staying in ONNX Runtime's
    arena, which keeps the largest ever asked for: right for a network whose inputs are large
    and of every size (the detector's fields), costly for many small runs (the classifier's
    chunks: 30 % slower in chunks of 64)."""
    import onnxruntime as ort

    one_blas_thread()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No memory pattern: ONNX Runtime plans and keeps one per input shape, and both models see
    # many (batches of 1-8 cells, fields of every size): 309 -> 256 MiB after 15 Chula fields
    # with both models, at the same speed (docs/service.md, "Memory").
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runtime_name() -> str:
    """ "onnxruntime <version>": what the cards and GET /model call the engine."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"
