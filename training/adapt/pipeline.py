"""`python -m training adapt`: a laboratory's reviewed cells make the classifier its own.

1. The reviewed red cells of the signed-off slides are cut from the records database
   (`import_slides`, into a scratch folder beside the output) and split by slide into fit,
   calibrate and test parts (training/adapt/cells.py).
2. The base model computes each cell's 512 features once (the service's own preprocessing and
   engine).
3. The last layer is refitted on the fit and calibrate cells together and the base model's
   replayed cells (training/adapt/head.py) at a few strengths of the pull toward the base
   weights, each with the laboratory's cells weighed less (LAB_WEIGHTS) while its fit would
   forget more than MAX_FORGETTING of the replayed validation cells (a clinic that reviewed only
   normal cells pulls every cell toward normal). Each candidate is judged cross-fitted: its
   slides (fields, when held out by field) are dealt into folds, and every cell is predicted by
   the same candidate fitted without its fold, so every reviewed cell outside the test part
   both teaches the final fit and measures the choice (a calibrate part alone, a fifth of 500
   reviews, was too few for the test below to see a real gain). A fit replaces the base layer
   only if those held-out predictions are right significantly more often than the base's (a
   one-sided sign test on the cells where the two disagree, z > MIN_GAIN_Z) and it loses at
   most MAX_FORGETTING on the replayed base validation cells; of those, the one right most
   often wins. Otherwise the base layer stays and only the calibration is the lab's. The
   reviewed cells are weighed to stand for their slides' cells (training/adapt/judging.py:
   the review queue picks the doubtful ones first) in the test and in "most often".
4. Recalibration: temperature and review threshold (for the base's target accuracy) on the
   held-out predictions of the chosen candidate; familiarity statistics (the lab's fit and
   calibrate cells join the training cells; thresholds from each cell's and field's distance to
   the statistics fitted without its fold), and field colours (the lab's fit and calibrate
   fields join the reference; threshold from each field's distance to a reference without its
   fold), so that the lab's own fields become familiar.
5. Before / after on the test part; a servable model folder (export.pkl, model_state.pt,
   model.onnx, model card, calibration, replay set, report.md, adaptation.json, a figure) is
   built beside `out` and renamed into place at the end: nothing half-written.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.classify.calibration import (
    Calibration,
    Familiarity,
    FieldColours,
    calibrated_probabilities,
    choose_review_threshold,
    field_score,
    fit_temperature,
)
from core.modelcard import ModelCard, ModelFileError
from training.adapt import DEFAULT_BASE
from training.adapt.cells import (
    COLOUR_COLUMNS,
    LEARN_PARTS,
    MIN_NEW_CLASS_CELLS,
    LabCells,
    read_lab_cells,
)
from training.adapt.figures import cell_figures, markdown_table
from training.adapt.head import L2, HeadFit, extend_weights, fit_last_layer
from training.adapt.judging import Judging, representative_weights, thin_evidence, unweighed
from training.adapt.replay import REPLAY_FILE, Replay, load_replay, training_mix_weights
from training.classify.calibrate import CELL_QUANTILE, FIELD_QUANTILE, crop_outputs, quantile
from training.errors import DataError

L2_CANDIDATES = (L2 * 10, L2 * 100, L2 * 1000)  # 0.01, 0.1, 1: from free to near the base
MAX_FORGETTING = 0.02  # accuracy on the replayed base validation cells a candidate may lose
# The laboratory's cells' weight against the replayed cells', tried in turn for each pull strength
# until a fit forgets at most MAX_FORGETTING.
LAB_WEIGHTS = (1.0, 0.5, 0.25, 0.1)
MIN_GAIN_Z = 1.645  # one-sided 5 %: a candidate must beat the base layer by more than chance
MAX_FOLDS = 5  # groups of the fit and calibrate cells, each held out once to judge a candidate
MOSTLY_NORMAL = 0.9  # reviewed cells this share normal or more: a clinic of healthy donors, warned
# The replayed cells weighed to the base's own training mix ("training") or each class alike
# ("balanced", before stop 38). On three laboratories' real fields, a clinic's reviews, the
# training mix kept 0.850-0.857 of Chula's test crops against 0.825-0.843, normal cells called
# normal 0.885-0.931 against 0.889-0.944 (research/txl_clinic_probe.py --replay-mix).
REPLAY_MIX = "training"
REPORT = "report.md"
SUMMARY = "adaptation.json"
FIGURE = "before_after.png"

Say = Callable[[str], None]
# Where the run stands, for a machine (`--progress-json`; the service's teach jobs): a stage in
# words and the share of the work done, 0..1.
Step = Callable[[str, float], None]


def no_step(stage: str, progress: float) -> None:
    """The default: steps are not reported (the human progress is `say`'s)."""


@dataclass
class Features:
    """The base network's outputs on one part of the lab's cells."""

    features: np.ndarray  # (N, D)
    targets: np.ndarray  # (N,) index into the adapted classes
    groups: np.ndarray | None = None  # (N,) the slide (or field) each cell is held out with


def adapt_from_database(
    url: str,
    out: Path,
    *,
    base: Path = DEFAULT_BASE,
    name: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    say: Say = print,
    step: Step = no_step,
) -> dict[str, Any]:
    """Adapt `base` to the reviewed cells of the signed-off slides at `url`; write `out`."""
    from training.datasets.slides import import_slides

    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.cells-") as scratch:
        cells = Path(scratch) / "cells"
        say("Reading the reviewed cells of the signed-off slides ...")
        step("reading the reviewed cells", 0.0)
        report = import_slides(
            url,
            cells,
            signed_off_only=True,
            val_share=0.0,
            test_share=0.0,
            seed=seed,
            progress=progress,
        )
        say(report.summary().splitlines()[0])
        return adapt_cells(
            cells,
            out,
            base=base,
            name=name,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
            say=say,
            source=report.database,
            step=step,
        )


def adapt_cells(
    cells: Path,
    out: Path,
    *,
    base: Path = DEFAULT_BASE,
    name: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    say: Say = print,
    source: str | None = None,
    step: Step = no_step,
) -> dict[str, Any]:
    """Adapt `base` to the crop set `cells` (an `import-slides` output); write `out`."""
    from core.classify.predictor import ModelLoadError, Predictor

    started = time.perf_counter()
    out = Path(out)
    _check_out(out, overwrite)
    step("loading the base model", 0.05)
    try:
        predictor = Predictor.load(Path(base), device="cpu", tta_views=1)
    except ModelLoadError as exc:
        raise DataError(f"cannot load the base model: {exc}") from exc
    card = predictor.card
    replay = load_replay(Path(base), card)
    if replay is None:
        raise DataError(
            f"the base model {base} carries no replay set of its training cells: add one with "
            "`python -m training add-replay --model DIR --data CROPS`"
        )
    lab = read_lab_cells(Path(cells), list(card.classes), seed)
    _say_cells(lab, say)
    warnings = warnings_for(lab)
    for warning in warnings:
        say(f"Warning: {warning}")
    parts = _features(predictor, lab, progress, step)
    base_weight = _last_layer(predictor.model).weight.detach().float().cpu()
    start = extend_weights(base_weight, list(card.classes), lab.classes)
    mix = (
        training_mix_weights(card, len(start), replay.part(train=True)[1])
        if REPLAY_MIX == "training"
        else None
    )
    judging = _judging(lab, lab.learn_rows())
    fit, choice, held_out = _choose_fit(start, parts, replay, lab, say, step, seed, mix, judging)
    choice["replay_mix"] = "balanced" if mix is None else "training"
    if choice["chosen"] == "base" and lab.new_classes:
        # The base layer has no row for them: a zero row would be a guess, not a class.
        say(f"Not learnt well enough to beat the base, so left out: {lab.new_classes}")
        fit, parts = _without_new_classes(fit, parts, lab)
        start = start[: len(lab.classes)]
    step("recalibrating", 0.8)
    calibration = _recalibrate(
        fit.weight, held_out, parts, replay, lab, predictor.calibration, seed
    )
    step("measuring before and after", 0.85)
    figures = _before_after(predictor, start, fit.weight, calibration, parts, replay, lab)
    seconds = time.perf_counter() - started
    summary = _summary(card, base, lab, choice, figures, calibration, warnings, seconds, source)
    step("writing the model folder", 0.9)
    staging = _staging(out)
    try:
        _write_model(staging, base, card, lab, fit.weight, calibration, replay, summary, name)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        _replace(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for line in markdown_table(figures["lab_test"]["before"], figures["lab_test"]["after"]):
        say(line)
    say(
        f"Adapted model written to {out} in {summary['seconds']:.0f} s; serve it with "
        f"RBC_MODEL_DIR={out}"
    )
    step("done", 1.0)
    return summary


# --- steps -----------------------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(
            f"{out} exists and is not empty: choose another folder, or pass --overwrite"
        )
    if overwrite and out.exists() and out.is_dir() and any(out.iterdir()):
        try:
            ModelCard.load(out)
        except ModelFileError:
            raise DataError(
                f"{out} is not a model folder: --overwrite replaces only an earlier model"
            ) from None


def warnings_for(lab: LabCells) -> list[str]:
    """What the laboratory should know before it activates the model, from what it reviewed."""
    normal = float((lab.rows["label"] == "normal").mean())
    if normal < MOSTLY_NORMAL:
        return []
    # Measured, not guessed: research/txl_clinic_probe.py (docs/training.md, "A clinic of
    # healthy donors on real foreign fields", by the number of cells reviewed).
    return [
        f"{normal:.0%} of the reviewed cells are normal, so the model learns that this "
        "laboratory's cells are normal; an abnormal cell in its stain may then be called normal "
        "without a review flag, and the more normal cells are reviewed, the more (on other "
        "laboratories' real fields, Chula's abnormal cells in the laboratory's colours: 1 % "
        "called normal unflagged before, 1-9 % after). The test slides cannot show it when they "
        "hold few abnormal cells: review cells of patients' slides too, of every class the "
        "laboratory sees."
    ]


def _say_cells(lab: LabCells, say: Say) -> None:
    counts = lab.counts()
    say(
        f"{len(lab.rows)} reviewed cells of {lab.rows['slide_id'].nunique()} slides, held out by "
        f"{lab.group_by}: " + ", ".join(f"{p} {sum(c.values())}" for p, c in counts.items())
    )
    for label in lab.new_classes:
        say(f"New class {label!r}: {int((lab.rows['label'] == label).sum())} reviewed cells")
    for label, n in lab.too_few.items():
        say(
            f"Left out {label!r}: {n} reviewed cells; a class of its own needs "
            f"{MIN_NEW_CLASS_CELLS} ({MIN_NEW_CLASS_CELLS - n} more)"
        )


def _last_layer(model: torch.nn.Module) -> torch.nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not layers or layers[-1].bias is not None:
        raise DataError("the base model's last layer is not a bias-free linear layer")
    return layers[-1]


# Where each step starts, as a share of the whole run: the fits of the last layer take most of
# it (about 60 of 73 s on 5,000 cells, 2 cores: each candidate fitted once on every cell and
# once without each fold), the features little.
FEATURE_STEPS = {"fit": 0.1, "calibrate": 0.15, "test": 0.2}
FIT_STEPS = (0.25, 0.45, 0.65)


def _features(
    predictor: Any, lab: LabCells, progress: bool, step: Step = no_step
) -> dict[str, Features]:
    parts = {}
    group = "slide_id" if lab.group_by == "slide" else "field_id"
    for part in ("fit", "calibrate", "test"):
        rows = lab.part(part)
        step(f"features of the {len(rows)} {part} cells", FEATURE_STEPS[part])
        _, feats = crop_outputs(predictor, lab.root, list(rows["path"]), part, progress, 1)
        parts[part] = Features(
            feats.numpy(), rows["target"].to_numpy(dtype=np.int64), rows[group].to_numpy()
        )
    return parts


def _judging(lab: LabCells, rows: Any) -> Judging:
    """The weights that make `rows` (cells of `lab`, in order) stand for the cells of their
    slides (or fields); all 1 when the crop set has no cell ids or no population.csv."""
    ids = rows["cell_id"].to_numpy() if "cell_id" in rows else np.full(len(rows), -1)
    return representative_weights(ids, lab.population, f"{lab.group_by}_id")


def _right(weight: torch.Tensor, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray((torch.as_tensor(x) @ weight.T).argmax(1).numpy() == y)


def _accuracy(weight: torch.Tensor, x: np.ndarray, y: np.ndarray) -> float:
    return float(_right(weight, x, y).mean()) if len(y) else math.nan


def gain_z(base_right: np.ndarray, right: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The sign test's z for "right more often than the base" on paired cells: cells only the
    candidate gets right against cells only the base does (0 when they never disagree). With
    `weights`, each cell counts its weight: under no difference each disagreement is a win or a
    loss alike, so the weighed sum has variance sum(w^2) over them."""
    w = np.ones(len(right)) if weights is None else np.asarray(weights, dtype=float)
    wins = float(w[right & ~base_right].sum())
    losses = float(w[base_right & ~right].sum())
    spread = float((w[right != base_right] ** 2).sum())
    return 0.0 if spread == 0 else (wins - losses) / math.sqrt(spread)


def fold_groups(groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each cell's fold, 0..folds-1: whole groups (slides, or fields) dealt in a seeded order,
    each to the fold that has the fewest cells so far."""
    names, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    have = np.zeros(folds, dtype=np.int64)
    fold_of = {}
    for i in order:
        k = int(have.argmin())
        fold_of[names[i]] = k
        have[k] += sizes[i]
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def _learn_folds(
    parts: dict[str, Features], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The fit and calibrate cells together (features, targets), each one's fold, and the
    number of folds: what the last layer and the familiarity statistics learn from, each judged
    on the folds it did not learn from."""
    learn = [parts[name] for name in LEARN_PARTS]
    if any(p.groups is None for p in learn):
        raise ValueError("the fit and calibrate cells need their slides (or fields)")
    x = np.concatenate([p.features for p in learn])
    y = np.concatenate([p.targets for p in learn])
    groups = np.concatenate([np.asarray(p.groups) for p in learn])
    n_folds = min(MAX_FOLDS, len(np.unique(groups)))
    return x, y, fold_groups(groups, n_folds, seed), n_folds


def _choose_fit(
    start: torch.Tensor,
    parts: dict[str, Features],
    replay: Replay,
    lab: LabCells,
    say: Say,
    step: Step = no_step,
    seed: int = 0,
    replay_weights: np.ndarray | None = None,
    judging: Judging | None = None,
) -> tuple[HeadFit, dict[str, Any], np.ndarray | None]:
    """Each candidate's fit on the fit and calibrate cells; the best held-out (cross-fitted)
    among those that beat the base and keep its cells. Also the chosen fit's held-out logits of
    those cells (None when the base is kept: it never saw them). `replay_weights` weighs the
    replayed cells by class (None: each class alike); `judging` weighs the judged cells (None:
    each alike)."""
    by_class = None if replay_weights is None else torch.as_tensor(replay_weights)
    x, y, folds, n_folds = _learn_folds(parts, seed)
    judging = judging or unweighed(len(y))
    w = judging.weights
    rv_x, rv_y = replay.part(train=False)
    replay_train = replay.part(train=True)
    base_replay = _accuracy(start, rv_x, rv_y)
    candidates: list[tuple[str, HeadFit, np.ndarray]] = [
        ("base", HeadFit(start, math.nan, 0), x @ start.numpy().T)
    ]
    for k, l2 in enumerate(L2_CANDIDATES):
        step(f"fitting the last layer ({k + 1} of {len(L2_CANDIDATES)})", FIT_STEPS[k])

        def fit(keep: np.ndarray, lab_weight: float, l2: float = l2) -> HeadFit:
            return fit_last_layer(
                start,
                (x[keep], y[keep]),
                replay_train,
                new_rows=len(lab.new_classes),
                l2=l2,
                lab_weight=lab_weight,
                replay_class_weights=by_class,
            )

        # The laboratory's cells weigh as much as the replayed ones unless that forgets more
        # than allowed (a clinic that reviewed only normal cells pulls every cell toward
        # normal); then less, until the fit keeps the base's cells.
        everything = np.ones(len(y), dtype=bool)
        for lab_weight in LAB_WEIGHTS:
            fitted = fit(everything, lab_weight)
            if _accuracy(fitted.weight, rv_x, rv_y) >= base_replay - MAX_FORGETTING:
                break
        held_out = np.empty((len(y), len(start)))
        for fold in range(n_folds):
            out = folds == fold
            held_out[out] = x[out] @ fit(~out, lab_weight).weight.numpy().T
        label = f"l2={l2:g}" + ("" if lab_weight == LAB_WEIGHTS[0] else f", lab x{lab_weight:g}")
        candidates.append((label, fitted, held_out))
    base_right = candidates[0][2].argmax(1) == y
    rows: list[dict[str, Any]] = []
    for label, fitted, held_out in candidates:
        right = held_out.argmax(1) == y
        rows.append(
            {
                "candidate": label,
                # Weighed to stand for the slides' cells (the reviewed cells' own beside it).
                "held_out_accuracy": round(float(np.average(right, weights=w)), 4),
                "held_out_accuracy_reviewed": round(float(right.mean()), 4),
                "replay_valid_accuracy": round(_accuracy(fitted.weight, rv_x, rv_y), 4),
                "gain_z": round(gain_z(base_right, right, w), 2),
            }
        )
    allowed = [0] + [
        i
        for i, r in enumerate(rows)
        if i
        and r["gain_z"] > MIN_GAIN_Z
        and r["replay_valid_accuracy"] >= base_replay - MAX_FORGETTING
    ]
    # Of the fits that beat the base, the best; ties go to the one nearer the base (later).
    best = max(allowed, key=lambda i: (rows[i]["held_out_accuracy"] if i else -1.0, i))
    say(
        f"Each candidate judged on {len(y)} cells, each predicted by the candidate fitted "
        f"without its {lab.group_by} ({n_folds} folds):"
    )
    if judging.weighed:
        say(
            f"  the reviewed cells weighed to stand for their slides' cells (worth "
            f"{judging.effective_cells:.0f} cells; {judging.uncovered:.0%} of the slides' cells "
            "are of a kind no reviewed cell stands for)"
        )
        hint = thin_evidence(judging)
        if hint:
            say(f"  Note: {hint}")
    for r in rows:
        say(
            f"  {r['candidate']:>8}: held-out cells {r['held_out_accuracy']:.3f} (gain z "
            f"{r['gain_z']:+.2f}), replayed base cells {r['replay_valid_accuracy']:.3f}"
        )
    say(f"Chosen: {rows[best]['candidate']}")
    if not best:
        say(
            f"The base model's last layer is kept: no fit was right significantly more often "
            f"than it on {lab.group_by}s it was not fitted on (z > {MIN_GAIN_Z} needed; best "
            f"{max(r['gain_z'] for r in rows):+.2f}) without forgetting more than "
            f"{MAX_FORGETTING} of the base's own cells. Only the calibration becomes the "
            f"laboratory's; reviews of more {lab.group_by}s may change that."
        )
    choice = {
        "candidates": rows,
        "chosen": rows[best]["candidate"],
        "folds": n_folds,
        "judging": judging.as_dict(),
    }
    return candidates[best][1], choice, (candidates[best][2] if best else None)


def _without_new_classes(
    fit: HeadFit, parts: dict[str, Features], lab: LabCells
) -> tuple[HeadFit, dict[str, Features]]:
    """The base classes only: the new classes' cells leave every part (and `lab`, in place)."""
    n = len(lab.classes) - len(lab.new_classes)
    lab.not_learnt = list(lab.new_classes)
    lab.rows = lab.rows[lab.rows["target"] < n].reset_index(drop=True)
    lab.classes, lab.new_classes = lab.classes[:n], []
    kept = {
        name: Features(
            part.features[part.targets < n],
            part.targets[part.targets < n],
            None if part.groups is None else part.groups[part.targets < n],
        )
        for name, part in parts.items()
    }
    return HeadFit(fit.weight[:n], fit.loss, fit.iterations), kept


def _recalibrate(
    weight: torch.Tensor,
    held_out: np.ndarray | None,
    parts: dict[str, Features],
    replay: Replay,
    lab: LabCells,
    base: Calibration | None,
    seed: int = 0,
) -> Calibration:
    """Temperature, review threshold, familiarity and field colours for the adapted layer.
    Temperature and threshold read the fit and calibrate cells' `held_out` logits (each from a
    fit that did not see the cell; None: the base layer's, which saw none) and the replayed
    base validation cells'. The familiarity statistics learn from the same cells and the
    replayed training cells; their thresholds come from each cell's and field's distance to
    statistics fitted without its fold (a calibrate part of one or two slides gave a field
    threshold from three fields, and fields of the laboratory's own were flagged)."""
    rv_x, rv_y = replay.part(train=False)
    learn_x, learn_y, folds, n_folds = _learn_folds(parts, seed)
    if held_out is None:
        held_out = learn_x @ weight.numpy().T
    logits = torch.cat(
        [torch.as_tensor(held_out).float(), torch.as_tensor(rv_x).float() @ weight.float().T]
    )
    y = torch.as_tensor(np.concatenate([learn_y, rv_y]))
    temperature = fit_temperature(logits, y)
    conf, pred = calibrated_probabilities(logits, temperature).max(dim=1)
    target_accuracy = base.target_accuracy if base else 0.97
    threshold = choose_review_threshold(conf, pred == y, target_accuracy)
    rt_x, rt_y = replay.part(train=True)

    def familiarity_of(keep: np.ndarray) -> Familiarity:
        return Familiarity.fit(
            np.concatenate([learn_x[keep], rt_x]), np.concatenate([learn_y[keep], rt_y])
        )

    familiarity = familiarity_of(np.ones(len(learn_y), dtype=bool))
    distances = np.empty(len(learn_y), dtype=np.float32)
    for fold in range(n_folds):
        out = folds == fold
        distances[out] = familiarity_of(~out).distance(learn_x[out])
    cell_threshold = quantile(
        np.concatenate([distances, familiarity.distance(rv_x)]).tolist(), CELL_QUANTILE
    )
    learn_fields = np.concatenate(
        [lab.part("fit")["field_id"].to_numpy(), lab.part("calibrate")["field_id"].to_numpy()]
    )
    medians = [s for s in _field_scores(distances, learn_fields).values() if s is not None]
    field_threshold = max(
        [quantile(medians, FIELD_QUANTILE)] + ([base.field_threshold] if base else [])
    )
    colours, colour_threshold = _colours(lab, base, learn_fields, folds)
    return Calibration(
        temperature=temperature,
        review_threshold=threshold,
        target_accuracy=target_accuracy,
        cell_threshold=cell_threshold,
        field_threshold=field_threshold,
        familiarity=familiarity,
        colours=colours,
        colour_threshold=colour_threshold,
        figures={
            "fitted_on": "a laboratory's fit and calibrate cells (each judged by a fit without "
            "its slide or field) and the replayed base validation cells"
        },
    )


def _field_scores(distances: np.ndarray, fields: np.ndarray) -> dict[Any, float | None]:
    """Each field's familiarity score (`field_score`) from its cells' `distances`."""
    return {f: field_score(distances[fields == f].tolist()) for f in np.unique(fields)}


def _colours(
    lab: LabCells, base: Calibration | None, learn_fields: np.ndarray, folds: np.ndarray
) -> tuple[FieldColours | None, float | None]:
    """The base's reference fields and the laboratory's fit and calibrate fields; each number
    keeps the base's spread, so the base's threshold keeps its meaning for its own fields. The
    threshold rises to flag about 1 % of the laboratory's fields, each scored against a reference
    without its fold (`folds`, per cell of `learn_fields`: the last layer's); never below the
    base's. From the calibrate fields alone (8 of a laboratory's 40), 13 of 50 of its other
    fields were flagged by their colours after adapting (research/txl_clinic_probe.py)."""
    if base is None or base.colours is None or base.colour_threshold is None:
        return None, None
    base_colours = base.colours
    fold_of = dict(zip(learn_fields.tolist(), folds.tolist(), strict=True))
    learn = lab.fields[lab.fields["part"].isin(["fit", "calibrate"])]
    descriptors = learn[COLOUR_COLUMNS].to_numpy(dtype=np.float64)
    field_folds = np.array([fold_of.get(f, -1) for f in learn["field_id"].tolist()])

    def reference(keep: np.ndarray) -> FieldColours:
        refs = np.concatenate([base_colours.reference, descriptors[keep].astype(np.float32)])
        return FieldColours(refs, base_colours.spread, base_colours.neighbour)

    scores = []
    for fold in sorted(set(field_folds.tolist()) - {-1}):
        without = reference(field_folds != fold)
        scores += [without.distance(d) for d in descriptors[field_folds == fold]]
    threshold = max(
        [base.colour_threshold] + ([quantile(scores, FIELD_QUANTILE)] if scores else [])
    )
    return reference(np.ones(len(descriptors), dtype=bool)), threshold


def _outcome(
    weight: torch.Tensor,
    calibration: Calibration | None,
    threshold: float,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    known: int | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """`cell_figures` of a layer; with `known`, only its first `known` classes can be called
    (the base model, which has no row for a new class)."""
    logits = torch.as_tensor(x) @ weight.T
    if known is not None:
        logits[:, known:] = -math.inf
    temperature = calibration.temperature if calibration else 1.0
    probs = calibrated_probabilities(logits, temperature).numpy()
    distances, cell_threshold = None, None
    if calibration is not None and calibration.familiarity is not None:
        distances = calibration.familiarity.distance(x)
        cell_threshold = calibration.cell_threshold
    return cell_figures(probs, y, classes, threshold, distances, cell_threshold, weights)


def _before_after(
    predictor: Any,
    start: torch.Tensor,
    weight: torch.Tensor,
    calibration: Calibration,
    parts: dict[str, Features],
    replay: Replay,
    lab: LabCells,
) -> dict[str, Any]:
    """Base and adapted model on the lab's test cells and on the replayed base validation cells;
    and the share of the lab's test fields each judges unfamiliar."""
    base_cal, base_thr = predictor.calibration, predictor.review_threshold
    test = parts["test"]
    rv_x, rv_y = replay.part(train=False)
    judging = _judging(lab, lab.part("test"))
    test_weights = judging.weights if judging.weighed else None
    figures: dict[str, Any] = {}
    for key, (x, y, w) in {
        "lab_test": (test.features, test.targets, test_weights),
        "base_valid": (rv_x, rv_y, None),
    }.items():
        figures[key] = {
            "before": _outcome(
                start,
                base_cal,
                base_thr,
                x,
                y,
                lab.classes,
                len(lab.classes) - len(lab.new_classes),
                w,
            ),
            "after": _outcome(
                weight, calibration, calibration.review_threshold, x, y, lab.classes, weights=w
            ),
        }
    figures["lab_test_fields_unfamiliar"] = {
        "before": _unfamiliar_fields(base_cal, lab, test.features),
        "after": _unfamiliar_fields(calibration, lab, test.features),
    }
    return figures


def _unfamiliar_fields(
    calibration: Calibration | None, lab: LabCells, x: np.ndarray
) -> dict[str, Any] | None:
    """How many of the test fields are judged unfamiliar, by their cells and by their colours
    (the cells: the reviewed ones, the share of a field's red cells a person looked at)."""
    if calibration is None or calibration.familiarity is None:
        return None
    field_ids = lab.part("test")["field_id"].to_numpy()
    distances = calibration.familiarity.distance(x)
    colours = dict(
        zip(
            lab.fields["field_id"], lab.fields[[f"c{i}" for i in range(13)]].to_numpy(), strict=True
        )
    )
    n, by_cells, by_colour, either = 0, 0, 0, 0
    for field_id, score in _field_scores(distances, field_ids).items():
        n += 1
        cells = calibration.is_unfamiliar_field(score)
        colour = False
        if calibration.colours is not None and field_id in colours:
            colour = calibration.is_unfamiliar_colour(
                calibration.colours.distance(colours[field_id])
            )
        by_cells += cells
        by_colour += colour
        either += cells or colour
    return {"fields": n, "unfamiliar": either, "by_cells": by_cells, "by_colours": by_colour}


# --- the model folder --------------------------------------------------------------------------


def _summary(
    card: ModelCard,
    base: Path,
    lab: LabCells,
    choice: dict[str, Any],
    figures: dict[str, Any],
    calibration: Calibration,
    warnings: list[str],
    seconds: float,
    source: str | None,
) -> dict[str, Any]:
    return {
        "base_model": {"path": str(base), "name": card.name, "weights_sha256": card.weights_sha256},
        "source": source or str(lab.root),
        "classes": lab.classes,
        "new_classes": lab.new_classes,
        "left_out_too_few": lab.too_few,
        "not_learnt": lab.not_learnt,
        "held_out_by": lab.group_by,
        "slides": int(lab.rows["slide_id"].nunique()),
        "fields": int(lab.rows["field_id"].nunique()),
        "cells": lab.counts(),
        "fit": choice,
        "calibration": calibration.summary(),
        "figures": figures,
        "warnings": warnings,
        "seconds_before_writing": round(seconds, 1),
    }


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))


def _replace(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an earlier model there goes only now."""
    from training.datasets.slides import replace_folder

    if out.exists() and not overwrite and any(out.iterdir()):
        raise DataError(f"{out} appeared while adapting; the result stays in {staging}")
    replace_folder(staging, out)


def set_last_layer(learn: Any, weight: torch.Tensor) -> None:
    """The exported learner's last layer replaced by a bias-free one holding `weight`."""
    head = learn.model[1]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    head[len(head) - 1] = layer


def _set_vocab(learn: Any, classes: list[str]) -> None:
    """The exported learner's class list (fastai keeps it on each loader's Categorize)."""
    from fastai.data.transforms import Categorize, CategoryMap

    vocab = CategoryMap(classes, sort=False)
    for loader in learn.dls.loaders:
        dataset = loader.dataset
        for tfm in dataset.tls[-1].tfms.fs:
            if isinstance(tfm, Categorize):
                tfm.vocab = vocab
        dataset.vocab = vocab
    if list(map(str, learn.dls.vocab)) != classes:
        raise DataError("could not set the exported learner's classes")


def _write_model(
    staging: Path,
    base: Path,
    card: ModelCard,
    lab: LabCells,
    weight: torch.Tensor,
    calibration: Calibration,
    replay: Replay,
    summary: dict[str, Any],
    name: str | None,
) -> None:
    """The adapted network through the export every model takes (export.pkl, model_state.pt,
    model.onnx, each checked against the learner), then its calibration, replay set, report."""
    from PIL import Image

    from core.classify.preprocess import Preprocessor
    from core.modelcard import sha256_file
    from training.classify.export import export_learner
    from training.classify.learner import load_exported

    learn, _ = load_exported(Path(base))
    set_last_layer(learn, weight)
    _set_vocab(learn, lab.classes)
    preprocess = Preprocessor.from_card(card)
    images = []
    for rel in lab.part("test")["path"].head(16):
        with Image.open(lab.root / rel) as image:
            images.append(image.convert("RGB"))
    after = summary["figures"]["lab_test"]["after"]
    export_learner(
        learn,
        staging,
        torch.from_numpy(preprocess.batch(images)),
        name=name or f"{card.name}-adapted",
        classes=lab.classes,
        architecture=card.architecture,
        input_size=card.input_size,
        normalization=card.normalization,
        crop_window_px=card.crop_window_px,
        resize_method=card.resize_method,
        method="adapt",
        tta_views=1,
        microns_per_pixel=card.microns_per_pixel,
        metrics={
            "split": "laboratory test cells (held out by " + lab.group_by + ")",
            "accuracy": after["accuracy"],
            "macro_f1": after["macro_f1"],
            "n": after["n"],
            "per_class": after["per_class"],
        },
        dataset={"source": summary["source"], "cells": summary["cells"]},
        training_config={"base_model": summary["base_model"], "fit": summary["fit"]},
        notes=[
            f"Adapted from {card.name} on the reviewed cells of {summary['slides']} slides "
            f"(training/adapt); before/after in {REPORT}."
        ],
    )
    calibration.save(staging)
    lab_replay = Replay(lab.classes, replay.features, replay.labels, replay.is_train)
    lab_replay.save(staging / REPLAY_FILE)
    adapted = ModelCard.load(staging)
    adapted.replay_file, adapted.replay_sha256 = REPLAY_FILE, sha256_file(staging / REPLAY_FILE)
    adapted.save(staging)
    _write_report(staging, summary)
    _plot(staging / FIGURE, summary["figures"]["lab_test"])


def _write_report(model_dir: Path, summary: dict[str, Any]) -> None:
    figures = summary["figures"]
    lines = [
        f"# Adapted model: {summary['base_model']['name']} taught by {summary['source']}",
        "",
        f"{summary['slides']} slides, {summary['fields']} fields; cells held out by "
        f"{summary['held_out_by']}: "
        + ", ".join(f"{p} {sum(c.values())}" for p, c in summary["cells"].items())
        + ". The test cells were used for nothing but these figures.",
        "",
        *(line for w in summary.get("warnings", []) for line in (f"**Warning.** {w}", "")),
        "## The laboratory's held-out test cells",
        "",
        *markdown_table(figures["lab_test"]["before"], figures["lab_test"]["after"]),
        "",
        "## The base model's own held-out cells (replayed validation cells): what was kept",
        "",
        *markdown_table(
            figures["base_valid"]["before"],
            figures["base_valid"]["after"],
            only=("n", "accuracy", "abnormal_missed"),
        ),
        "",
        "## Fields judged unfamiliar (the laboratory's test fields)",
        "",
        f"before: {figures['lab_test_fields_unfamiliar']['before']}",
        f"after: {figures['lab_test_fields_unfamiliar']['after']}",
        "",
        "## How the last layer was chosen",
        "",
        f"Each fit and calibrate cell predicted by the candidate fitted without its "
        f"{summary['held_out_by']} ({summary['fit'].get('folds')} folds)"
        + _judging_words(summary["fit"].get("judging"))
        + ":",
        "",
        "| candidate | held-out accuracy | the same, reviewed cells unweighed | gain over the "
        "base (sign test z) | replayed base validation accuracy |",
        "|---|---|---|---|---|",
        *(
            f"| {r['candidate']} | {r['held_out_accuracy']} | "
            f"{r.get('held_out_accuracy_reviewed', r['held_out_accuracy'])} | {r['gain_z']} | "
            f"{r['replay_valid_accuracy']} |"
            for r in summary["fit"]["candidates"]
        ),
        "",
        f"Chosen: {summary['fit']['chosen']}. New classes: {summary['new_classes'] or 'none'}. "
        f"Left out (too few cells): {summary['left_out_too_few'] or 'none'}. Left out (no fit "
        f"beat the base): {summary['not_learnt'] or 'none'}.",
        "",
        f"Calibration: {summary['calibration']}",
        "",
    ]
    (model_dir / REPORT).write_text("\n".join(lines))


def _judging_words(judging: dict[str, Any] | None) -> str:
    if not judging or not judging.get("weighed"):
        return "; every reviewed cell weighs alike (no record of the slides' other cells)"
    return (
        f"; each weighed to stand for the slides' cells by what the analysis proposed and how "
        f"sure it was (worth {judging['effective_cells']} cells; "
        f"{judging['uncovered']:.0%} of the slides' cells of a kind no reviewed cell stands for)"
    )


def _plot(dest: Path, lab_test: dict[str, Any]) -> None:
    """Each class's recall before and after, on the laboratory's test cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = lab_test["before"]["per_class"], lab_test["after"]["per_class"]
    names = [
        n
        for n in sorted(set(before) | set(after))
        if after.get(n, before.get(n, {})).get("support")
    ]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(names) + 2), 3.5))
    ax.bar(x - 0.2, [before.get(n, {}).get("recall") or 0 for n in names], 0.4, label="before")
    ax.bar(x + 0.2, [after.get(n, {}).get("recall") or 0 for n in names], 0.4, label="after")
    ax.set_xticks(
        x,
        [f"{n}\n(n={after.get(n, before.get(n, {})).get('support')})" for n in names],
        rotation=45,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("recall on test cells")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)
