"""The thesis's two transfer-learning methods.

- feature extraction: body frozen (BatchNorm layers stay trainable, as fastai does), new head,
  `fit_one_cycle(epochs, lr)`;
- fine tuning: optionally some frozen epochs first (or start from a feature-extraction run with
  `init_from`), then unfreeze, run the learning-rate finder, and `fit_one_cycle(epochs,
  slice(max_lr / lr_ratio, max_lr))` with discriminative rates.

Every run writes into its own folder: config.yaml, history.csv, figures, report.md, metrics.json,
and model/ (export.pkl + model_card.json).

Feature extraction on a CPU (`cache_features`): fastai's frozen training still pushes every batch
through the body, forward and backward (its BatchNorm layers stay trainable), so a 2-core CPU
spends minutes per epoch on a body whose weights do not change. `fit_head_on_cached_features`
runs the body in eval mode, once per augmented view of each training image and once per
validation image; the head then trains on the pooled features in seconds per epoch. The
difference from the thesis's method 1: the body's BatchNorm statistics stay ImageNet's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.archs import ArchSpec, create_model, get_spec
from training.classify.config import TrainConfig
from training.classify.data import assign_splits, build_dataloaders, fingerprint, scan_dataset
from training.classify.evaluate import predict
from training.classify.export import export_learner
from training.classify.interpret import (
    History,
    interpret_split,
    plot_loss_curves,
    plot_lr_find,
    write_report,
)
from training.classify.learner import load_exported
from training.datasets.chula import DEFAULT_WINDOW
from training.errors import ConfigError
from training.progress import batch_progress, epoch_logger

log = logging.getLogger(__name__)
# The thesis fine-tuned with slice(1e-6, 1e-4).
THESIS_MAX_LR = 1e-4
HEAD_BATCH_SIZE = 256


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def new_run_dir(out_dir: Path, name: str) -> Path:
    """A fresh folder for the run; an earlier run of the same name is never overwritten."""
    candidate, n = out_dir / name, 1
    while candidate.exists():
        n += 1
        candidate = out_dir / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate


def test_smears(items: Any) -> list[str]:
    """The smear images of the test split (for evaluating later on smears never trained on)."""
    if "source_image" not in items.columns:
        return []
    return sorted(map(str, items.loc[items["split"] == "test", "source_image"].unique()))


def _crop_window(data: Path) -> int | None:
    """The native crop size of an imported set (from its import report), if known."""
    report = data / "import_report.json"
    if report.is_file():
        window = json.loads(report.read_text()).get("arguments", {}).get("window")
        return int(window) if window else DEFAULT_WINDOW
    return None


def class_weights(cfg: TrainConfig, classes: list[str], train_labels: Any) -> torch.Tensor | None:
    """Per-class loss weights in vocab order, or None; the mean weight over training cells is 1,
    so the loss keeps its scale and the learning rates keep their meaning."""
    if cfg.class_weighting == "none":
        return None
    counts = train_labels.value_counts()
    n = torch.tensor([float(counts.get(c, 0)) for c in classes]).clamp(min=1)
    power = 0.5 if cfg.class_weighting == "inverse_sqrt" else 1.0
    w = n.pow(-power)
    return w * n.sum() / (w * n).sum()


def make_loss(cfg: TrainConfig, weights: torch.Tensor | None, device: torch.device) -> Any:
    from fastai.losses import CrossEntropyLossFlat

    weight = None if weights is None else weights.to(device)
    return CrossEntropyLossFlat(weight=weight, label_smoothing=cfg.label_smoothing)


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


def _frozen_stage(
    learn: Any, cfg: TrainConfig, epochs: int, history: History, head_loss: Any
) -> None:
    """Body frozen, head trained: through fastai (BatchNorm trainable, the thesis's way) or on
    cached body features (much faster on a CPU; see `fit_head_on_cached_features`)."""
    if cfg.cache_features:
        head_learn = fit_head_on_cached_features(
            learn, epochs, cfg.lr, cfg.cache_views, cfg.seed, head_loss
        )
        history.add_stage("frozen (cached)", head_learn.recorder)
    else:
        learn.freeze()
        learn.fit_one_cycle(epochs, cfg.lr)
        history.add_stage("frozen", learn.recorder)


def _fit(
    learn: Any, cfg: TrainConfig, history: History, run_dir: Path, head_loss: Any
) -> dict[str, float | bool | None] | None:
    """Train as the method says; returns the learning-rate finder's figures when it ran.
    `head_loss` is the loss on the CPU, for a head trained on cached features."""
    if cfg.method == "feature-extract":
        _frozen_stage(learn, cfg, cfg.epochs, history, head_loss)
        return None
    if cfg.frozen_epochs:
        _frozen_stage(learn, cfg, cfg.frozen_epochs, history, head_loss)
    learn.unfreeze()
    if cfg.max_lr is not None:
        # The rate is given: the finder's sweep (minutes on a CPU) would change nothing.
        learn.fit_one_cycle(cfg.epochs, slice(cfg.max_lr / cfg.lr_ratio, cfg.max_lr))
        history.add_stage("unfrozen", learn.recorder)
        return {"suggested": None, "used": cfg.max_lr, "finder": False}
    suggested: float | None
    try:
        suggested = float(learn.lr_find(show_plot=False).valley)
    except IndexError:
        # The finder stops when the loss diverges; on very small sets it can stop before it
        # has recorded anything to suggest from.
        suggested = None
    if suggested is None:
        log.warning(
            "the LR finder gave no suggestion; using max_lr %.0e (the thesis's)", THESIS_MAX_LR
        )
    max_lr = suggested or THESIS_MAX_LR
    plot_lr_find(learn.recorder.lrs, learn.recorder.losses, max_lr, run_dir / "lr_find.png")
    learn.fit_one_cycle(cfg.epochs, slice(max_lr / cfg.lr_ratio, max_lr))
    history.add_stage("unfrozen", learn.recorder)
    return {"suggested": suggested, "used": max_lr, "finder": True}


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run one training method as configured; returns the run folder."""
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)
    from fastai.torch_core import set_seed

    spec = get_spec(cfg.arch)
    device = resolve_device(cfg.device)
    set_seed(cfg.seed, reproducible=True)
    data = Path(cfg.data)
    index = scan_dataset(data, cfg.classes, progress=progress)
    items = assign_splits(index, cfg)
    dls = build_dataloaders(items, cfg, spec.mean, spec.std, device)
    classes = [str(c) for c in dls.vocab]
    # Built before the run folder so that a weights error leaves no empty run behind.
    model = _initial_model(cfg, classes)
    run_dir = new_run_dir(Path(cfg.out_dir), cfg.name)
    cfg.save(run_dir / "config.yaml")
    log.info("run folder %s", run_dir)

    weights = class_weights(cfg, classes, items.loc[items["split"] == "train", "label"])
    if weights is not None:
        log.info(
            "class weights %s",
            {c: round(float(w), 2) for c, w in zip(classes, weights, strict=True)},
        )
    learn = _learner(dls, model, make_loss(cfg, weights, device), run_dir)
    history = History()
    started = time.perf_counter()
    lr_info = _fit_with_progress(
        learn, cfg, history, run_dir, make_loss(cfg, weights, torch.device("cpu")), progress
    )
    train_seconds = time.perf_counter() - started
    with contextlib.suppress(OSError):
        (run_dir / "models").rmdir()  # lr_find's scratch folder, once empty

    results = _evaluate_run(learn, items, history, run_dir, cfg.top_losses)
    summary: dict[str, Any] = {
        "name": run_dir.name,
        "method": cfg.method,
        "arch": cfg.arch,
        "weights": cfg.weights,
        "input_size": cfg.input_size,
        "epochs_run": len(history.epochs),
        "train_seconds": train_seconds,
        "device": str(device),
        "data": str(data),
        "layout": index.layout,
        "fingerprint": fingerprint(items, data),
        "split_counts": {s: int((items["split"] == s).sum()) for s in ("train", "valid", "test")},
        "lr_find": lr_info,
    }
    card_metrics = {k: v for k, v in results[-1].items() if k != "top_losses"}
    _export_run(
        learn, cfg, spec, run_dir, classes, items, len(index.skipped), summary, card_metrics
    )
    write_report(run_dir, summary, results)
    log.info("train time %.0f s; %s", train_seconds, {r["split"]: r["accuracy"] for r in results})
    return run_dir


def _initial_model(cfg: TrainConfig, classes: list[str]) -> nn.Sequential:
    """A new model for `classes`, with the weights of `cfg.init_from`'s model where given."""
    model = create_model(cfg.arch, len(classes), cfg.weights)
    if cfg.init_from:
        previous, prev_card = load_exported(Path(cfg.init_from) / "model")
        if prev_card.classes != classes or prev_card.architecture != cfg.arch:
            raise ConfigError(
                f"init_from {cfg.init_from} is a {prev_card.architecture} for {prev_card.classes}, "
                f"not a {cfg.arch} for {classes}"
            )
        model.load_state_dict(previous.model.state_dict())
    return model


def _learner(dls: Any, model: nn.Sequential, loss_func: Any, run_dir: Path) -> Any:
    from fastai.learner import Learner
    from fastai.metrics import F1Score, accuracy
    from fastai.vision.learner import default_split

    learn = Learner(
        dls,
        model,
        loss_func=loss_func,
        metrics=[accuracy, F1Score(average="macro")],
        splitter=default_split,
        path=run_dir,
    )
    learn.logger = epoch_logger(learn)
    return learn


def _fit_with_progress(
    learn: Any, cfg: TrainConfig, history: History, run_dir: Path, head_loss: Any, progress: bool
) -> dict[str, float | bool | None] | None:
    """`_fit`, showing its progress as suits where the output goes."""
    # Bars on a terminal; one printed line per epoch in logs, where bars turn into noise.
    show_bars = progress and sys.stdout.isatty()
    # Added for the fit only: the exported learner must hold no callback of ours.
    batch_log = batch_progress() if progress and not show_bars else None
    with contextlib.nullcontext() if show_bars else learn.no_bar():
        if batch_log is not None:
            learn.add_cb(batch_log)
        try:
            return _fit(learn, cfg, history, run_dir, head_loss)
        finally:
            if batch_log is not None:
                learn.remove_cb(batch_log)
            learn.logger = print  # fastai's default; our closure is not for the exported file


def _evaluate_run(
    learn: Any, items: Any, history: History, run_dir: Path, top_losses: int
) -> list[dict[str, Any]]:
    """The run's history, loss curves and per-split figures (valid, test where present), written
    into `run_dir`; returns the splits' metrics."""
    history.frame().to_csv(run_dir / "history.csv", index=False)
    plot_loss_curves(history, run_dir / "loss_curves.png")
    results = []
    for split in ("valid", "test"):
        split_items = items[items["split"] == split]
        if len(split_items):
            pred = predict(learn, split_items)
            results.append(interpret_split(learn, pred, split, run_dir, top_losses))
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def _export_run(
    learn: Any,
    cfg: TrainConfig,
    spec: ArchSpec,
    run_dir: Path,
    classes: list[str],
    items: Any,
    skipped_files: int,
    summary: dict[str, Any],
    card_metrics: dict[str, Any],
) -> None:
    """The trained learner and its model card, into `run_dir / "model"`."""
    sample = learn.dls.test_dl(items[items["split"] == "valid"].head(16)).one_batch()[0]
    export_learner(
        learn,
        run_dir / "model",
        sample,
        name=run_dir.name,
        classes=classes,
        architecture=cfg.arch,
        input_size=cfg.input_size,
        normalization={"mean": spec.mean, "std": spec.std},
        crop_window_px=_crop_window(Path(cfg.data)),
        resize_method="pad-border",
        method=cfg.method,
        metrics=card_metrics,
        dataset={
            "source": summary["data"],
            "fingerprint": summary["fingerprint"],
            "layout": summary["layout"],
            "split_counts": summary["split_counts"],
            "class_counts": {
                str(k): int(v)
                for k, v in items[items["split"] == "train"]["label"].value_counts().items()
            },
            "skipped_files": skipped_files,
            "test_smears": test_smears(items),
        },
        training_config={
            **cfg.to_dict(),
            "epochs_run": summary["epochs_run"],
            "train_seconds": round(summary["train_seconds"], 1),
            "lr_find": summary["lr_find"],
        },
    )
