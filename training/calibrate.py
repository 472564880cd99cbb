"""Fit and measure a model's calibration: `python -m training calibrate --model models/default`.

What it fits (core/classify/calibration.py says what each part means), on the imported crop set
(`import-chula`) and, for the field parts, on whole Chula fields run through the same pipeline as
the service (the learned detector, the true scale given):

1. the temperature, on the validation crops (negative log-likelihood);
2. the review threshold, on the validation crops, for `--target-accuracy` among cells not flagged;
3. the familiarity statistics, on the training crops (no augmentation); the cell threshold is the
   99th percentile of the validation crops' distances;
4. the field threshold: the 99th percentile of the validation smears' field scores.

What it measures, nothing of it fitted: on the test crops, expected calibration error before and
after, a reliability diagram, the share of cells not flagged and their accuracy; on the Chula
test fields, the share judged unfamiliar; with `--foreign` (txl-pbc, other laboratories), each
source's fields' scores, the AUROC between Chula's test fields and theirs, and how their red
cells are called (normal, abnormal without a review flag). Everything goes into calibration.json
beside the weights and a short report (calibration.md, with a reliability diagram).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from core.classify.calibration import (
    Calibration,
    Familiarity,
    calibrated_probabilities,
    choose_review_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from core.classify.predictor import Predictor
from core.smear.analysis import SmearError, analyze_smear
from training.errors import DataError

log = logging.getLogger(__name__)

CELL_QUANTILE = 0.99
# The field threshold flags ~1 % of Chula's validation fields: the target is at most 5 % of its
# test fields, and 80-odd fields per split leave a few points of chance either way.
FIELD_QUANTILE = 0.99
CHULA_MICRONS_PER_PIXEL = 0.19
NORMAL = "normal"


def _crops(data: Path, classes: Sequence[str]) -> pd.DataFrame:
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        raise DataError(
            f"{data} has no manifest.csv: make it with `python -m training import-chula`"
        )
    df = pd.read_csv(manifest)
    missing = {"path", "label", "split", "source_image"} - set(df.columns)
    if missing:
        raise DataError(f"{manifest} lacks the columns {sorted(missing)}")
    df = df[df["label"].isin(classes)].reset_index(drop=True)
    if df.empty or not {"train", "valid", "test"} <= set(df["split"]):
        raise DataError(f"{manifest} needs train, valid and test crops of the model's classes")
    df["target"] = df["label"].map({c: i for i, c in enumerate(classes)})
    return df


def _raw_outputs(
    predictor: Predictor, data: Path, paths: Sequence[str], label: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (views, N, classes) and features (N, D) of crops, as the service computes them."""
    logits, feats = [], []
    step = 256
    for start in tqdm(
        range(0, len(paths), step), desc=f"{label} crops", unit="batch", disable=not progress
    ):
        images = []
        for rel in paths[start : start + step]:
            with Image.open(Path(data) / rel) as image:
                images.append(image.convert("RGB"))
        lg, ft = predictor.raw_outputs(predictor.preprocess.batch(images))
        logits.append(lg)
        feats.append(ft)
    return torch.cat(logits, dim=1), torch.cat(feats)


def auroc(inside: Sequence[float], outside: Sequence[float]) -> float | None:
    """P(an outside score > an inside score), ties counting half (Mann-Whitney)."""
    if not inside or not outside:
        return None
    a, b = np.asarray(inside)[:, None], np.asarray(outside)[None, :]
    return float(((b > a) + 0.5 * (b == a)).mean())


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def _field_runs(
    images: Sequence[tuple[Path, float]],
    predictor: Predictor,
    detector: Any,
    label: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """Each field through the service's analysis (scale given): its score and its red cells."""
    rows = []
    for path, mpp in tqdm(images, desc=f"{label} fields", unit="field", disable=not progress):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        try:
            result = analyze_smear(rgb, predictor, mpp, detector=detector)
        except SmearError as exc:
            log.warning("%s: %s", path.name, exc)
            continue
        counted = result.counted
        rows.append(
            {
                "field": path.name,
                "score": result.familiarity,
                "unfamiliar": result.unfamiliar,
                "cells": len(counted),
                "normal": sum(c.label == NORMAL for c in counted),
                "abnormal_unflagged": sum(
                    c.label != NORMAL and not c.needs_review for c in counted
                ),
                "flagged": sum(c.needs_review for c in counted),
            }
        )
    return rows


def _foreign_fields(root: Path, split: str) -> dict[str, list[tuple[Path, float]]]:
    """txl-pbc's fields of `split` per source, each with its source's derived scale."""
    from training.datasets.fields import derived_microns_per_pixel, read_yolo

    report = read_yolo(root, splits=("train", "val", "test"), progress=False)
    fields: dict[str, list[tuple[Path, float]]] = {}
    for source in report.sources():
        everything = [f for f in report.fields if f.source == source]
        mpp = derived_microns_per_pixel(everything)
        if mpp is None:
            continue
        fields[source] = [(f.image, mpp) for f in everything if f.split == split]
    return fields


def _share(rows: list[dict[str, Any]], key: str, of: str = "cells") -> float | None:
    total = sum(r[of] for r in rows)
    return None if total == 0 else sum(r[key] for r in rows) / total


def calibrate(
    model_dir: Path,
    data: Path,
    chula: Path | None,
    detector_dir: Path | None,
    foreign: Path | None = None,
    target_accuracy: float = 0.97,
    progress: bool = True,
    say: Callable[[str], None] = print,
    chula_microns_per_pixel: float = CHULA_MICRONS_PER_PIXEL,
) -> dict[str, Any]:
    """Fit the calibration of `model_dir`, write it there, and return the figures.
    `chula_microns_per_pixel`: the scale of the fields under `chula` (Chula's camera)."""
    started = time.perf_counter()
    predictor = Predictor.load(Path(model_dir), device="cpu")
    # Fit on the raw network, whatever calibration the folder holds already.
    predictor.calibration = None
    df = _crops(data, predictor.classes)
    outputs = {}
    for split in ("train", "valid", "test"):
        part = df[df["split"] == split]
        logits, feats = _raw_outputs(predictor, data, list(part["path"]), split, progress)
        outputs[split] = (logits, feats, torch.tensor(part["target"].to_numpy()))

    v_logits, v_feats, v_y = outputs["valid"]
    t_logits, t_feats, t_y = outputs["test"]
    temperature = fit_temperature(v_logits, v_y)
    say(f"temperature {temperature:.3f} (fitted on {len(v_y)} validation crops)")

    def confidences(logits: torch.Tensor, y: torch.Tensor, t: float) -> tuple[Any, Any]:
        probs = calibrated_probabilities(logits, t)
        conf, pred = probs.max(dim=1)
        return conf, pred == y

    figures: dict[str, Any] = {"temperature_fitted_on": len(v_y)}
    for split, (logits, _, y) in (("valid", outputs["valid"]), ("test", outputs["test"])):
        for name, t in (("before", 1.0), ("after", temperature)):
            conf, ok = confidences(logits, y, t)
            figures[f"ece_{split}_{name}"] = round(expected_calibration_error(conf, ok), 4)
    v_conf, v_ok = confidences(v_logits, v_y, temperature)
    threshold = choose_review_threshold(v_conf, v_ok, target_accuracy)

    _, tr_feats, tr_y = outputs["train"]
    familiarity = Familiarity.fit(tr_feats, tr_y)
    v_dist = familiarity.distance(v_feats)
    t_dist = familiarity.distance(t_feats)
    cell_threshold = _quantile(v_dist.tolist(), CELL_QUANTILE)

    t_conf, t_ok = confidences(t_logits, t_y, temperature)
    unflagged = (t_conf >= threshold) & (t_dist <= cell_threshold)
    figures.update(
        {
            "test_cells": len(t_y),
            "test_accuracy": round(float(t_ok.float().mean()), 4),
            "test_unflagged_share": round(float(unflagged.float().mean()), 4),
            "test_unflagged_accuracy": round(float(t_ok[unflagged].float().mean()), 4)
            if unflagged.any()
            else None,
            "test_flagged_low_confidence": int((t_conf < threshold).sum()),
            "test_flagged_unfamiliar": int((t_dist > cell_threshold).sum()),
            "valid_unflagged_share": round(
                float(((v_conf >= threshold) & (v_dist <= cell_threshold)).float().mean()), 4
            ),
            "distance_train_median": round(float(familiarity.distance(tr_feats).median()), 3),
            "distance_valid_median": round(float(v_dist.median()), 3),
            "distance_test_median": round(float(t_dist.median()), 3),
            "reliability_test_before": reliability_bins(*confidences(t_logits, t_y, 1.0)),
            "reliability_test_after": reliability_bins(t_conf, t_ok),
        }
    )
    calibration = Calibration(
        temperature=temperature,
        review_threshold=threshold,
        target_accuracy=target_accuracy,
        cell_threshold=cell_threshold,
        field_threshold=math.inf,  # chosen below, on whole fields
        familiarity=familiarity,
    )
    predictor.calibration = calibration
    predictor.review_threshold = threshold
    say(
        f"review threshold {threshold:.3f} (valid, target {target_accuracy}); test: "
        f"{figures['test_unflagged_share']:.1%} of cells not flagged, "
        f"{figures['test_unflagged_accuracy']} accurate; ECE {figures['ece_test_before']} -> "
        f"{figures['ece_test_after']}"
    )

    if chula is not None:
        from core.detect.learned import CellDetector

        detector = CellDetector.load(detector_dir, device="cpu") if detector_dir else None
        smears = Path(chula) / "Dataset"
        fields: dict[str, list[tuple[Path, float]]] = {
            split: [
                (smears / name, chula_microns_per_pixel)
                for name in sorted(df[df["split"] == split]["source_image"].unique())
                if (smears / name).is_file()
            ]
            for split in ("valid", "test")
        }
        valid_rows = _field_runs(fields["valid"], predictor, detector, "chula valid", progress)
        valid_scores = [r["score"] for r in valid_rows if r["score"] is not None]
        if not valid_scores:
            raise DataError(f"no validation field of {smears} had a red cell to score")
        calibration.field_threshold = _quantile(valid_scores, FIELD_QUANTILE)
        test_rows = _field_runs(fields["test"], predictor, detector, "chula test", progress)
        chula_scores = [r["score"] for r in test_rows if r["score"] is not None]
        runs = {"chula": test_rows}
        if foreign is not None:
            for source, items in _foreign_fields(Path(foreign), "test").items():
                runs[source] = _field_runs(items, predictor, detector, source, progress)
        by_source = {}
        for source, rows in runs.items():
            scores = [r["score"] for r in rows if r["score"] is not None]
            flagged = sum(calibration.is_unfamiliar_field(s) for s in scores)
            by_source[source] = {
                "fields": len(rows),
                "unfamiliar_fields": flagged,
                "unfamiliar_share": round(flagged / len(scores), 4) if scores else None,
                "score_median": round(float(np.median(scores)), 3) if scores else None,
                "auroc_vs_chula_test": None if source == "chula" else auroc(chula_scores, scores),
                "red_cells": sum(r["cells"] for r in rows),
                "normal_share": _share(rows, "normal"),
                "abnormal_unflagged_share": _share(rows, "abnormal_unflagged"),
                "flagged_share": _share(rows, "flagged"),
                "scores": [round(float(x), 3) for x in scores],
            }
        others = [
            r["score"] for s, rows in runs.items() if s != "chula" for r in rows if r["score"]
        ]
        figures.update(
            {
                "field_threshold_fitted_on": len(valid_scores),
                "valid_fields_unfamiliar_share": round(
                    sum(calibration.is_unfamiliar_field(s) for s in valid_scores)
                    / max(1, len(valid_scores)),
                    4,
                ),
                "fields": by_source,
                "auroc_vs_chula_test_all_foreign": auroc(chula_scores, others),
                "detector": str(detector_dir) if detector_dir else "classical",
            }
        )
        say(
            f"field threshold {calibration.field_threshold:.3f}; Chula test fields judged "
            f"unfamiliar: {by_source['chula']['unfamiliar_fields']} of "
            f"{by_source['chula']['fields']}"
        )
        for source, row in by_source.items():
            say(f"  {source}: {row}")
    figures["seconds"] = round(time.perf_counter() - started, 1)
    calibration.figures = figures
    calibration.save(Path(model_dir))
    write_report(Path(model_dir), calibration)
    return {**calibration.summary(), "figures": figures}


def write_report(model_dir: Path, calibration: Calibration) -> None:
    """calibration.md and its plots: the reliability diagram and the familiarity of fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = calibration.figures
    fig_, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    curves = (("reliability_test_before", "softmax"), ("reliability_test_after", "T-scaled"))
    for key, name in curves:
        rows = [r for r in fig.get(key, []) if r["cells"]]
        ax.plot(
            [r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"test crops: ECE {fig.get('ece_test_before')} -> {fig.get('ece_test_after')}", fontsize=9
    )
    ax.legend()
    fig_.tight_layout()
    fig_.savefig(model_dir / "reliability_test.png", dpi=110)
    plt.close(fig_)
    fields = fig.get("fields") or {}
    if fields:
        fig_, ax = plt.subplots(figsize=(6, 3))
        for row, values in enumerate(fields.values()):
            scores = values.get("scores", [])
            jitter = np.random.default_rng(row).uniform(-0.25, 0.25, len(scores))
            ax.scatter(scores, row + jitter, s=8, alpha=0.6)
        ax.axvline(calibration.field_threshold, color="red", lw=1, label="field threshold")
        ax.set_yticks(range(len(fields)), list(fields))
        ax.set_xlabel("field familiarity (median cell distance to the training cells)")
        ax.legend(fontsize=8)
        fig_.tight_layout()
        fig_.savefig(model_dir / "familiarity_fields.png", dpi=110)
        plt.close(fig_)

    lines = [
        "# Calibration (`python -m training calibrate`)",
        "",
        f"- temperature {calibration.temperature:.3f}; expected calibration error on the test "
        f"crops {fig.get('ece_test_before')} before, {fig.get('ece_test_after')} after "
        "(validation: "
        f"{fig.get('ece_valid_before')} -> {fig.get('ece_valid_after')}).",
        f"- review threshold {calibration.review_threshold:.3f} (chosen on validation for "
        f"{calibration.target_accuracy:.0%} accuracy among cells not flagged): on the test crops "
        f"{fig.get('test_unflagged_share')} of cells are not flagged, and "
        f"{fig.get('test_unflagged_accuracy')} of those are right.",
        f"- familiarity: cell threshold {calibration.cell_threshold:.3f}, field threshold "
        f"{calibration.field_threshold:.3f}; median distance train "
        f"{fig.get('distance_train_median')}, test {fig.get('distance_test_median')}.",
        "",
        "![reliability](reliability_test.png)",
    ]
    if fields:
        lines += [
            "",
            "| fields from | fields | judged unfamiliar | median score | AUROC vs Chula test "
            "| red cells | called normal | abnormal, not flagged |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for source, row in fields.items():
            lines.append(
                f"| {source} | {row['fields']} | {row['unfamiliar_fields']} | "
                f"{row['score_median']} | {_fmt(row['auroc_vs_chula_test'])} | "
                f"{row['red_cells']} | "
                f"{_fmt(row['normal_share'])} | {_fmt(row['abnormal_unflagged_share'])} |"
            )
        lines.append("")
        lines.append(
            f"AUROC, Chula test fields against every foreign field: "
            f"{_fmt(fig.get('auroc_vs_chula_test_all_foreign'))}."
        )
        lines += ["", "![field familiarity](familiarity_fields.png)"]
    (model_dir / "calibration.md").write_text("\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
