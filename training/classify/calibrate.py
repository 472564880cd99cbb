"""Fit and measure a model's calibration: `python -m training calibrate --model models/default`.

What it fits (core/classify/calibration.py says what each part means), on the imported crop set
(`import-chula`) and, for the field parts, on whole Chula fields run through the same pipeline as
the service (the learned detector, the true scale given):

1. the temperature, on the validation crops (negative log-likelihood);
2. the review threshold, on the validation crops, for `--target-accuracy` among cells not flagged;
3. the familiarity statistics, on the training crops (no augmentation); the cell threshold is the
   99th percentile of the validation crops' distances;
4. the field threshold: the 99th percentile of the validation smears' field scores;
5. the field colours: the training smears' colour descriptors, and a threshold at the 99th
   percentile of the validation smears' colour distances.

What it measures, nothing of it fitted: on the test crops, expected calibration error before and
after, a reliability diagram, the share of cells not flagged and their accuracy; on the Chula
test fields, the share judged unfamiliar; with `--foreign` (txl-pbc, other laboratories), each
source's fields' scores, the AUROC between Chula's test fields and theirs (for each signal and
for the verdict's own combination, the larger of score / threshold), and how their red
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
    COLOUR_NEIGHBOUR,
    Calibration,
    Familiarity,
    FieldColours,
    calibrated_probabilities,
    choose_review_threshold,
    expected_calibration_error,
    field_colour_descriptor,
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


def model_crops(data: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The crop set's manifest rows of the model's classes, with each class's index (`target`)."""
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


def crop_outputs(
    predictor: Predictor,
    data: Path,
    paths: Sequence[str],
    label: str,
    progress: bool,
    tta_views: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (views, N, classes) and features (N, D) of crops, as the service computes them
    (with the predictor's test-time views, or `tta_views`)."""
    logits, feats = [], []
    step = 256
    for start in tqdm(
        range(0, len(paths), step), desc=f"{label} crops", unit="batch", disable=not progress
    ):
        images = []
        for rel in paths[start : start + step]:
            with Image.open(Path(data) / rel) as image:
                images.append(image.convert("RGB"))
        lg, ft = predictor.raw_outputs(predictor.preprocess.batch(images), tta_views)
        logits.append(torch.from_numpy(lg))
        feats.append(torch.from_numpy(ft))
    return torch.cat(logits, dim=1), torch.cat(feats)


def auroc(inside: Sequence[float], outside: Sequence[float]) -> float | None:
    """P(an outside score > an inside score), ties counting half (Mann-Whitney)."""
    if not inside or not outside:
        return None
    a, b = np.asarray(inside)[:, None], np.asarray(outside)[None, :]
    return float(((b > a) + 0.5 * (b == a)).mean())


def quantile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-quantile of `values` (linear interpolation), as every fitted threshold uses it."""
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
            result = analyze_smear(rgb, predictor, mpp, detector=detector).result
        except SmearError as exc:
            log.warning("%s: %s", path.name, exc)
            continue
        counted = result.counted
        rows.append(
            {
                "field": path.name,
                "score": result.familiarity.score,
                "colour_score": result.familiarity.colour_score,
                "unfamiliar": result.familiarity.unfamiliar,
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


def _chula_fields(
    df: pd.DataFrame, smears: Path, split: str, microns_per_pixel: float
) -> list[tuple[Path, float]]:
    """The Chula fields of `split` that hold crops of the model's classes, with their scale."""
    names = sorted(df[df["split"] == split]["source_image"].unique())
    return [(smears / n, microns_per_pixel) for n in names if (smears / n).is_file()]


def _colour_descriptor(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return field_colour_descriptor(image)


# The field signals the report measures: the cells' features, the field's colours, and the
# verdict's combination (the larger of each signal's score over its threshold: above 1 is
# unfamiliar). Value: the suffix of the figures' names.
SIGNALS = {"cells": "", "colours": "_colours", "verdict": "_verdict"}


def _verdict(row: dict[str, Any], calibration: Calibration) -> float:
    """The larger of the field's two scores, each over its threshold (> 1: unfamiliar)."""
    ratios = [
        row[key] / threshold
        for key, threshold in (
            ("score", calibration.field_threshold),
            ("colour_score", calibration.colour_threshold),
        )
        if row.get(key) is not None and threshold
    ]
    return max(ratios, default=0.0)


def _signal(rows: list[dict[str, Any]], signal: str, calibration: Calibration) -> list[float]:
    if signal == "verdict":
        return [_verdict(r, calibration) for r in rows if r["score"] is not None]
    key = "score" if signal == "cells" else "colour_score"
    return [r[key] for r in rows if r[key] is not None]


def _source_figures(
    rows: list[dict[str, Any]],
    chula_rows: list[dict[str, Any]],
    calibration: Calibration,
    is_chula: bool,
) -> dict[str, Any]:
    """One source's fields: how many were judged unfamiliar, each signal's AUROC against the
    Chula test fields, and how their red cells were called."""
    scores = _signal(rows, "cells", calibration)
    flagged = sum(bool(r["unfamiliar"]) for r in rows)
    figures: dict[str, Any] = {
        "fields": len(rows),
        "unfamiliar_fields": flagged,
        "unfamiliar_share": round(flagged / len(rows), 4) if rows else None,
        "score_median": round(float(np.median(scores)), 3) if scores else None,
    }
    for signal, suffix in SIGNALS.items():
        figures[f"auroc_vs_chula_test{suffix}"] = (
            None
            if is_chula
            else auroc(_signal(chula_rows, signal, calibration), _signal(rows, signal, calibration))
        )
    colours = _signal(rows, "colours", calibration)
    figures |= {
        "colour_score_median": round(float(np.median(colours)), 3) if colours else None,
        "red_cells": sum(r["cells"] for r in rows),
        "normal_share": _share(rows, "normal"),
        "abnormal_unflagged_share": _share(rows, "abnormal_unflagged"),
        "flagged_share": _share(rows, "flagged"),
        "scores": [round(float(x), 3) for x in scores],
        "colour_scores": [round(float(x), 3) for x in colours],
    }
    return figures


def _share(rows: list[dict[str, Any]], key: str, of: str = "cells") -> float | None:
    total = sum(r[of] for r in rows)
    return None if total == 0 else sum(r[key] for r in rows) / total


# Per split: the crops' logits (views, N, classes), features (N, D) and targets (N).
Outputs = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    predictor = Predictor.load(Path(model_dir), device="cpu", engine="torch")
    # Fit on the raw network, whatever calibration the folder holds already.
    predictor.calibration = None
    df = model_crops(data, predictor.classes)
    outputs = _split_outputs(predictor, data, df, progress)
    calibration, figures = _fit_cells(outputs, target_accuracy, say)
    predictor.calibration = calibration
    predictor.review_threshold = calibration.review_threshold
    if chula is not None:
        figures.update(
            _fit_fields(
                calibration,
                predictor,
                df,
                Path(chula) / "Dataset",
                chula_microns_per_pixel,
                detector_dir,
                foreign,
                progress,
                say,
            )
        )
    figures["seconds"] = round(time.perf_counter() - started, 1)
    calibration.figures = figures
    calibration.save(Path(model_dir))
    write_report(Path(model_dir), calibration)
    return {**calibration.summary(), "figures": figures}


def _split_outputs(predictor: Predictor, data: Path, df: pd.DataFrame, progress: bool) -> Outputs:
    """The network's outputs on the train, valid and test crops, with their targets."""
    outputs = {}
    for split in ("train", "valid", "test"):
        part = df[df["split"] == split]
        logits, feats = crop_outputs(predictor, data, list(part["path"]), split, progress)
        outputs[split] = (logits, feats, torch.tensor(part["target"].to_numpy()))
    return outputs


def _confidences(logits: torch.Tensor, y: torch.Tensor, t: float) -> tuple[Any, Any]:
    """Each crop's top calibrated probability at temperature `t`, and whether it is right."""
    probs = calibrated_probabilities(logits, t)
    conf, pred = probs.max(dim=1)
    return conf, pred == y


def _fit_cells(
    outputs: Outputs, target_accuracy: float, say: Callable[[str], None]
) -> tuple[Calibration, dict[str, Any]]:
    """The cells' part: temperature and review threshold on the validation crops, familiarity
    on the training crops, measured on the test crops. The field threshold is left to fields."""
    v_logits, v_feats, v_y = outputs["valid"]
    temperature = fit_temperature(v_logits, v_y)
    say(f"temperature {temperature:.3f} (fitted on {len(v_y)} validation crops)")
    figures: dict[str, Any] = {"temperature_fitted_on": len(v_y)}
    figures.update(_ece_figures(outputs, temperature))
    v_conf, v_ok = _confidences(v_logits, v_y, temperature)
    threshold = choose_review_threshold(v_conf, v_ok, target_accuracy)

    _, tr_feats, tr_y = outputs["train"]
    familiarity = Familiarity.fit(tr_feats, tr_y)
    v_dist = torch.from_numpy(familiarity.distance(v_feats))
    cell_threshold = quantile(v_dist.tolist(), CELL_QUANTILE)
    figures.update(
        _cell_figures(outputs, familiarity, temperature, threshold, cell_threshold, v_conf, v_dist)
    )
    calibration = Calibration(
        temperature=temperature,
        review_threshold=threshold,
        target_accuracy=target_accuracy,
        cell_threshold=cell_threshold,
        field_threshold=math.inf,  # chosen on whole fields, if any
        familiarity=familiarity,
    )
    say(
        f"review threshold {threshold:.3f} (valid, target {target_accuracy}); test: "
        f"{figures['test_unflagged_share']:.1%} of cells not flagged, "
        f"{figures['test_unflagged_accuracy']} accurate; ECE {figures['ece_test_before']} -> "
        f"{figures['ece_test_after']}"
    )
    return calibration, figures


def _ece_figures(outputs: Outputs, temperature: float) -> dict[str, float]:
    """Expected calibration error of the valid and test crops, before and after scaling."""
    figures = {}
    for split in ("valid", "test"):
        logits, _, y = outputs[split]
        for name, t in (("before", 1.0), ("after", temperature)):
            conf, ok = _confidences(logits, y, t)
            figures[f"ece_{split}_{name}"] = round(expected_calibration_error(conf, ok), 4)
    return figures


def _cell_figures(
    outputs: Outputs,
    familiarity: Familiarity,
    temperature: float,
    threshold: float,
    cell_threshold: float,
    v_conf: torch.Tensor,
    v_dist: torch.Tensor,
) -> dict[str, Any]:
    """The test crops' share flagged and accuracy; distances of each split; reliability bins."""
    t_logits, t_feats, t_y = outputs["test"]
    _, tr_feats, _ = outputs["train"]
    t_dist = torch.from_numpy(familiarity.distance(t_feats))
    t_conf, t_ok = _confidences(t_logits, t_y, temperature)
    unflagged = (t_conf >= threshold) & (t_dist <= cell_threshold)
    return {
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
        "distance_train_median": round(
            float(torch.from_numpy(familiarity.distance(tr_feats)).median()), 3
        ),
        "distance_valid_median": round(float(v_dist.median()), 3),
        "distance_test_median": round(float(t_dist.median()), 3),
        "reliability_test_before": reliability_bins(*_confidences(t_logits, t_y, 1.0)),
        "reliability_test_after": reliability_bins(t_conf, t_ok),
    }


def _fit_fields(
    calibration: Calibration,
    predictor: Predictor,
    df: pd.DataFrame,
    smears: Path,
    microns_per_pixel: float,
    detector_dir: Path | None,
    foreign: Path | None,
    progress: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The fields' part, on whole fields through the service's analysis: colours on Chula's
    training fields, both field thresholds on its validation fields, figures on the test fields
    (Chula's, and `foreign`'s per source). `predictor` must hold `calibration`."""
    from core.detect.learned import CellDetector

    detector = (
        CellDetector.load(detector_dir, device="cpu", engine="torch") if detector_dir else None
    )

    def runs_of(split: str) -> list[dict[str, Any]]:
        fields = _chula_fields(df, smears, split, microns_per_pixel)
        return _field_runs(fields, predictor, detector, f"chula {split}", progress)

    train_fields = _chula_fields(df, smears, "train", microns_per_pixel)
    calibration.colours = _fit_colours(train_fields, progress)
    calibration.colour_threshold = math.inf  # chosen below, on the validation fields
    valid_rows = runs_of("valid")
    fitted_on = _fit_field_thresholds(calibration, valid_rows, smears)
    runs = {"chula": runs_of("test")}
    if foreign is not None:
        for source, items in _foreign_fields(Path(foreign), "test").items():
            runs[source] = _field_runs(items, predictor, detector, source, progress)
    figures = {
        "field_threshold_fitted_on": fitted_on,
        "colour_reference_fields": len(train_fields),
        **_field_figures(calibration, runs, valid_rows),
        "detector": str(detector_dir) if detector_dir else "classical",
    }
    by_source = figures["fields"]
    say(
        f"field threshold {calibration.field_threshold:.3f}, colour threshold "
        f"{calibration.colour_threshold:.3f}; Chula test fields judged unfamiliar: "
        f"{by_source['chula']['unfamiliar_fields']} of {by_source['chula']['fields']}"
    )
    for source, row in by_source.items():
        say(f"  {source}: {row}")
    return figures


def _fit_colours(train_fields: Sequence[tuple[Path, float]], progress: bool) -> FieldColours:
    """The reference of field colours: one descriptor per training field."""
    return FieldColours.fit(
        np.stack(
            [
                _colour_descriptor(path)
                for path, _ in tqdm(
                    train_fields, desc="chula train field colours", disable=not progress
                )
            ]
        )
    )


def _fit_field_thresholds(
    calibration: Calibration, valid_rows: list[dict[str, Any]], smears: Path
) -> int:
    """Set the field and colour thresholds from the validation fields' scores; returns how many
    fields had a score."""
    valid_scores = [r["score"] for r in valid_rows if r["score"] is not None]
    valid_colours = [r["colour_score"] for r in valid_rows if r["colour_score"] is not None]
    if not valid_scores or not valid_colours:
        raise DataError(f"no validation field of {smears} had a red cell to score")
    calibration.field_threshold = quantile(valid_scores, FIELD_QUANTILE)
    calibration.colour_threshold = quantile(valid_colours, FIELD_QUANTILE)
    return len(valid_scores)


def _field_figures(
    calibration: Calibration,
    runs: dict[str, list[dict[str, Any]]],
    valid_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The validation fields judged unfamiliar, each source's figures, and each signal's AUROC
    between Chula's test fields and every foreign field together."""
    test_rows = runs["chula"]
    everyone_else = [r for s, rows in runs.items() if s != "chula" for r in rows]
    return {
        "valid_fields_unfamiliar_share": round(
            sum(_verdict(r, calibration) > 1 for r in valid_rows) / len(valid_rows), 4
        ),
        "fields": {
            source: _source_figures(rows, test_rows, calibration, source == "chula")
            for source, rows in runs.items()
        },
        **{
            f"auroc_vs_chula_test_all_foreign{suffix}": auroc(
                _signal(test_rows, signal, calibration),
                _signal(everyone_else, signal, calibration),
            )
            for signal, suffix in SIGNALS.items()
        },
    }


def write_report(model_dir: Path, calibration: Calibration) -> None:
    """calibration.md and its plots: the reliability diagram and the familiarity of fields."""
    import matplotlib

    matplotlib.use("Agg")

    fields = calibration.figures.get("fields") or {}
    _plot_reliability(calibration.figures, model_dir / "reliability_test.png")
    if fields:
        _plot_field_familiarity(calibration, fields, model_dir / "familiarity_fields.png")
    lines = _summary_lines(calibration)
    if fields:
        lines += _fields_table(calibration.figures, fields)
    (model_dir / "calibration.md").write_text("\n".join(lines) + "\n")


def _plot_reliability(fig: dict[str, Any], dest: Path) -> None:
    """The test crops' accuracy against confidence, before and after temperature scaling."""
    import matplotlib.pyplot as plt

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
    fig_.savefig(dest, dpi=110)
    plt.close(fig_)


def _plot_field_familiarity(calibration: Calibration, fields: dict[str, Any], dest: Path) -> None:
    """Each source's field scores (cells, and colours where fitted) against the threshold."""
    import matplotlib.pyplot as plt

    panels = [("scores", calibration.field_threshold, "cells: median distance to training cells")]
    if calibration.colour_threshold is not None:
        panels.append(
            (
                "colour_scores",
                calibration.colour_threshold,
                "colours: distance to training fields",
            )
        )
    fig_, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3), squeeze=False)
    for ax, (key, threshold, title) in zip(axes[0], panels, strict=True):
        for row, values in enumerate(fields.values()):
            scores = values.get(key, [])
            jitter = np.random.default_rng(row).uniform(-0.25, 0.25, len(scores))
            ax.scatter(scores, row + jitter, s=8, alpha=0.6)
        ax.axvline(threshold, color="red", lw=1, label="threshold")
        ax.set_yticks(range(len(fields)), list(fields))
        ax.set_xlabel(title)
        ax.legend(fontsize=8)
    fig_.tight_layout()
    fig_.savefig(dest, dpi=110)
    plt.close(fig_)


def _summary_lines(calibration: Calibration) -> list[str]:
    """The report's heading and its paragraph on cells, colours and the reliability diagram."""
    fig = calibration.figures
    return [
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
        f"- field colours: threshold {_fmt(calibration.colour_threshold)} (distance to the "
        f"{COLOUR_NEIGHBOUR}th nearest of {fig.get('colour_reference_fields')} training fields); "
        "a field is unfamiliar when its cells or its colours are beyond their threshold.",
        "",
        "![reliability](reliability_test.png)",
    ]


def _fields_table(fig: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """The report's table of fields per source, the AUROC against every foreign field, and the
    familiarity plot."""
    lines = [
        "",
        "| fields from | fields | judged unfamiliar | median score (cells / colours) "
        "| AUROC vs Chula test (cells / colours / verdict) "
        "| red cells | called normal | abnormal, not flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, row in fields.items():
        aurocs = " / ".join(
            _fmt(row.get(f"auroc_vs_chula_test{suffix}")) for suffix in SIGNALS.values()
        )
        lines.append(
            f"| {source} | {row['fields']} | {row['unfamiliar_fields']} | "
            f"{row['score_median']} / {row.get('colour_score_median')} | {aurocs} | "
            f"{row['red_cells']} | "
            f"{_fmt(row['normal_share'])} | {_fmt(row['abnormal_unflagged_share'])} |"
        )
    lines.append("")
    everyone = " / ".join(
        _fmt(fig.get(f"auroc_vs_chula_test_all_foreign{suffix}")) for suffix in SIGNALS.values()
    )
    lines.append(
        f"AUROC, Chula test fields against every foreign field (cells / colours / verdict): "
        f"{everyone}. On an unfamiliar field every cell called abnormal is marked for review."
    )
    lines += ["", "![field familiarity](familiarity_fields.png)"]
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
