"""What a run shows a person: loss curves, LR finder, confusion matrix, top losses with Grad-CAM,
per-class figures, and one Markdown report that ties them together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from core.classify.gradcam import grad_cam, overlay
from training.classify.evaluate import (
    Predictions,
    classification_metrics,
    confusion_matrix,
    most_confused,
)


@dataclass
class History:
    """Per-epoch losses and metrics over every stage of a run (fastai's Recorder resets per fit)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    batch_losses: list[float] = field(default_factory=list)

    def add_stage(self, stage: str, recorder: Any) -> None:
        names = [str(n) for n in recorder.metric_names[1:-1]]  # drop "epoch" and "time"
        for values in recorder.values:
            row: dict[str, Any] = {"stage": stage, "epoch": len(self.epochs) + 1}
            row.update({n: float(v) for n, v in zip(names, values, strict=False)})
            self.epochs.append(row)
        self.batch_losses.extend(float(x) for x in recorder.losses)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs)


def plot_loss_curves(history: History, path: Path) -> None:
    frame = history.frame()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(history.batch_losses, lw=0.8, alpha=0.8)
    ax1.set(title="training loss per batch", xlabel="batch", ylabel="loss")
    if not frame.empty:
        ax2.plot(frame["epoch"], frame["train_loss"], "o-", label="train")
        ax2.plot(frame["epoch"], frame["valid_loss"], "o-", label="valid")
        for stage, group in frame.groupby("stage", sort=False):
            ax2.axvline(group["epoch"].min() - 0.5, color="grey", lw=0.6, ls=":")
            ax2.text(
                group["epoch"].min() - 0.4, ax2.get_ylim()[1], str(stage), va="top", fontsize=8
            )
        ax2.set(title="loss per epoch", xlabel="epoch", ylabel="loss")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], chosen: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(chosen, color="red", ls="--", label=f"chosen max lr {chosen:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="learning-rate finder")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix: each row shows where one actual class went."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(5.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=60, ha="right")
    ax.set_yticks(ticks, classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(metrics: dict[str, Any], path: Path, title: str) -> None:
    classes = list(metrics["per_class"])
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 2), 4))
    for offset, key in zip((-0.27, 0, 0.27), ("precision", "recall", "f1"), strict=True):
        ax.bar(x + offset, [metrics["per_class"][c][key] for c in classes], 0.27, label=key)
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set(ylim=(0, 1.05), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_top_losses(learn: Any, pred: Predictions, k: int, path: Path) -> list[dict[str, Any]]:
    """The k items the model got most wrong, each with its Grad-CAM for the predicted class."""
    k = min(k, len(pred.losses))
    if k == 0:
        return []
    order = np.argsort(-pred.losses)[:k]
    dl = learn.dls.test_dl(pred.items.iloc[order], with_labels=False, bs=k)
    (xb,) = dl.one_batch()[:1]
    model = learn.model.eval()
    cams = grad_cam(model, xb, torch.as_tensor(pred.preds[order], device=xb.device)).cpu().numpy()
    images = dl.after_batch.decode((xb.cpu(),))[0]  # undo normalisation: bytes 0-255
    vocab = list(learn.dls.vocab)
    cols = min(k, 3)
    rows_n = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.3 * cols, 3.6 * rows_n), squeeze=False)
    listed = []
    for ax, idx, img, cam in zip(axes.flat, order, images, cams, strict=False):
        rgb = img.permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8)
        actual, predicted = vocab[int(pred.targets[idx])], vocab[int(pred.preds[idx])]
        prob = float(pred.probs[idx, pred.preds[idx]])
        ax.imshow(overlay(rgb, cam))
        ax.set_title(
            f"{actual} → {predicted}\nloss {pred.losses[idx]:.2f}, p {prob:.2f}", fontsize=8
        )
        listed.append(
            {
                "path": str(pred.items.iloc[idx]["path"]),
                "actual": actual,
                "predicted": predicted,
                "loss": round(float(pred.losses[idx]), 4),
                "probability": round(prob, 4),
            }
        )
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("top losses (Grad-CAM of the predicted class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return listed


def interpret_split(
    learn: Any, pred: Predictions, split: str, out: Path, top_k: int
) -> dict[str, Any]:
    """Metrics and figures for one split; returns the metrics plus figure file names."""
    classes = [str(c) for c in learn.dls.vocab]
    metrics = classification_metrics(pred.targets, pred.preds, classes)
    cm = confusion_matrix(pred.targets, pred.preds, len(classes))
    plot_confusion(cm, classes, out / f"confusion_{split}.png", f"normalised confusion ({split})")
    plot_per_class(metrics, out / f"per_class_{split}.png", f"per-class figures ({split})")
    top = plot_top_losses(learn, pred, top_k, out / f"top_losses_{split}.png")
    return {
        "split": split,
        **metrics,
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused(cm, classes),
        "top_losses": top,
    }


def _metrics_table(metrics: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in metrics["per_class"].items():
        figures = f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f}"
        lines.append(f"| {name} | {figures} | {m['support']} |")
    return "\n".join(lines)


def split_figures(res: dict[str, Any]) -> list[str]:
    """Report lines: a split's headline figures, then its per-class table."""
    return [
        f"accuracy **{res['accuracy']:.4f}**, macro-F1 **{res['macro_f1']:.4f}**, n = {res['n']}",
        "",
        _metrics_table(res),
        "",
    ]


def confused_pairs(res: dict[str, Any]) -> str:
    pairs = ", ".join(f"{a} → {p}: {n}" for a, p, n in res["most_confused"])
    return "Most confused pairs (actual → predicted: count): " + (pairs or "none")


def evaluation_section(res: dict[str, Any]) -> list[str]:
    """Report lines for one evaluated split (`interpret_split`'s result): figures, per-class
    table, confusion matrix, per-class plot, the most confused pairs, the top losses."""
    split = res["split"]
    return [
        f"## Evaluation on the {split} split",
        "",
        *split_figures(res),
        f"![confusion matrix](confusion_{split}.png)",
        "",
        f"![per-class figures](per_class_{split}.png)",
        "",
        confused_pairs(res),
        "",
        f"![top losses](top_losses_{split}.png)",
        "",
    ]


def write_report(out: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """report.md: the run's settings, curves and, per evaluated split, metrics and figures."""
    lines = [
        f"# Run report: {summary['name']}",
        "",
        f"- method: {summary['method']}; architecture: {summary['arch']}; "
        f"weights: {summary['weights']}",
        f"- input size: {summary['input_size']} px; epochs: {summary['epochs_run']}; "
        f"training time: {summary['train_seconds']:.0f} s on {summary['device']}",
        f"- data: `{summary['data']}` ({summary['layout']} layout), fingerprint "
        f"`{summary['fingerprint'][:16]}…`; items per split: {summary['split_counts']}",
        "- the resolved configuration is in `config.yaml`; per-epoch figures in `history.csv`",
        "",
        "## Training",
        "",
        "![loss curves](loss_curves.png)",
        "",
    ]
    if summary.get("lr_find"):
        suggested = summary["lr_find"]["suggested"]
        used = summary["lr_find"]["used"]
        if summary["lr_find"].get("finder", True):  # runs from before "finder" ran it
            lines += [
                f"Learning-rate finder: suggestion "
                f"{'none' if suggested is None else f'{suggested:.2e}'}, "
                f"max lr used {used:.2e}.",
                "",
                "![lr finder](lr_find.png)",
                "",
            ]
        else:
            lines += [f"Max lr {used:.2e}, given (the learning-rate finder did not run).", ""]
    for res in results:
        lines += evaluation_section(res)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
