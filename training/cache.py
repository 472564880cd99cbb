"""Feature extraction on a CPU: run the frozen body once, then train the head on cached features.

fastai's frozen training still pushes every batch through the body, forward and backward (its
BatchNorm layers stay trainable), so a 2-core CPU spends minutes per epoch on a body whose weights
do not change. Here the body runs in eval mode, once per augmented view of each training image and
once per validation image; the head then trains on the pooled features in seconds per epoch.
The difference from the thesis's method 1: the body's BatchNorm statistics stay ImageNet's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch
from torch import nn

from training.progress import epoch_logger

log = logging.getLogger(__name__)
HEAD_BATCH_SIZE = 256


@torch.no_grad()
def _pooled_features(
    body: nn.Module, pool: nn.Module, dl: Any, label: str
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, targets = [], []
    started = last = time.perf_counter()
    n = len(dl)
    for i, (xb, yb) in enumerate(dl):
        feats.append(pool(body(xb)).float().cpu())
        targets.append(yb.cpu())
        now = time.perf_counter()
        if now - last >= 30:
            last = now
            eta = (now - started) / (i + 1) * (n - i - 1)
            print(f"  caching {label}: batch {i + 1}/{n}, about {eta:.0f} s left", flush=True)
    return torch.cat(feats), torch.cat(targets)


def fit_head_on_cached_features(
    learn: Any, epochs: int, lr: float, views: int, seed: int, loss_func: Any = None
) -> Any:
    """Train `learn.model[1]` (the head) on cached body features; returns the head's Learner,
    whose recorder holds the losses and metrics. `learn.model` is trained in place.
    `loss_func` (default: the learner's) must live on the CPU, where the head trains."""
    import fastai.callback.schedule  # noqa: F401  (fit_one_cycle)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import set_seed

    # fastai moves the model to the data's device only when a fit starts; caching comes first.
    learn.model.to(learn.dls.device)
    body, head = learn.model[0], learn.model[1]
    pool, tail = head[:2], head[2:]  # concat pool + flatten; then BN, dropout, linear, ...
    body.eval()
    started = time.perf_counter()
    train_x, train_y = [], []
    for view in range(views):
        set_seed(seed + view)  # each view draws its own augmentation
        x, y = _pooled_features(body, pool, learn.dls.train, f"train view {view + 1}/{views}")
        train_x.append(x)
        train_y.append(y)
    valid_x, valid_y = _pooled_features(body, pool, learn.dls.valid, "valid")
    log.info(
        "cached %d training and %d validation feature vectors in %.0f s",
        sum(len(x) for x in train_x),
        len(valid_x),
        time.perf_counter() - started,
    )
    train_ds = list(zip(torch.cat(train_x), torch.cat(train_y), strict=True))
    valid_ds = list(zip(valid_x, valid_y, strict=True))
    set_seed(seed)
    # Large batches: a feature vector is cheap, and per-batch overhead dominates on a CPU.
    batch_size = min(HEAD_BATCH_SIZE, max(1, len(train_ds) // 4))  # tiny sets get batches too
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=batch_size, device=torch.device("cpu"))
    tail_learn = Learner(
        dls,
        tail.cpu(),
        loss_func=loss_func if loss_func is not None else learn.loss_func,
        metrics=learn.metrics,
        path=learn.path,
    )
    tail_learn.logger = epoch_logger(tail_learn)
    # Bars only where the main learner shows them (a terminal), epoch lines otherwise.
    has_bar = any(type(cb).__name__ == "ProgressCallback" for cb in learn.cbs)
    # A small MLP on 64-row batches gains nothing from threads, and loses much when another
    # process holds a core (OpenMP threads then wait on each other at every op).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.nullcontext() if has_bar else tail_learn.no_bar():
            tail_learn.fit_one_cycle(epochs, lr)
    finally:
        torch.set_num_threads(threads)
    tail.to(next(body.parameters()).device)
    return tail_learn
