"""How much of a laboratory's shift `python -m training adapt` recovers, on simulated laboratories.

    .venv/bin/python bench/bench_adapt.py --data /tmp/chula-crops [--reviewed 500] \
        [--sources bccd,bcd,raabin] [--out research/results/adapt/simulated-labs.json]

A simulated laboratory is Chula's test split recoloured to a txl-pbc source's stain and camera
(bench/bench_shift.py's Reinhard transfer of cell and background pixels, the source's statistics
measured on its train fields). Chula's test smears are split in two, by smear (seeded): the
laboratory reviews `--reviewed` cells of the first half (drawn at random, as a technologist
would meet them; each smear is a slide of one field), and the adapted model is measured on the
second half, which the command never sees. The reviewed cells go to `adapt_cells` exactly as
`import-slides` would lay them out (manifest.csv, fields.csv with each recoloured field's colour
descriptor), so the run is the product's, held-out split and choice of fit included.

Figures per source, all on the second half's crops of the base model's classes:
- `clean`: the base model on the crops as imported;
- `shifted`: the base model on the recoloured crops;
- `adapted`: the adapted model on the recoloured crops;
- `recovered`: (adapted - shifted) / (clean - shifted), the share of the shift's cost regained;
- `chula_change`: the adapted model against the base on every clean Chula test crop (forgetting);
- `seconds`: the adapt run; `candidates`: how adapt judged each fit (in the JSON only).
- `normal_called_normal_*`, `normal_abnormal_unflagged_*`: of the second half's normal cells,
  shifted, the share the base and the adapted model call normal, and call abnormal without the
  cell's own review flag (what a clinic of healthy donors sees);
- `abnormal_called_normal_unflagged_*`: of its abnormal cells, shifted, the share called normal
  without a review flag (what a laboratory would miss unseen).
`--review-classes normal` makes the laboratory a clinic of healthy donors: it reviews only
normal cells. With `--new-class elliptocyte` the laboratory also reviews Chula's elliptocytes, a
class the base model lacks, and the adapted model's recall of it is reported. `--order queue`
takes the reviewed cells as a technologist following each slide's review queue would (the
service's `teaching_order` on the base model's calls), `--order confidence` as one working down
the page's default list (least confident first); the default draws them at random. As
import-slides does, the folder holds population.csv (every crop of the reviewed smears, with the
base model's call and margin), by which adapt weighs the reviewed cells to stand for their
slides (training/adapt/judging.py); `--no-population` leaves it out.

`--time-cells N` instead times the command itself, `python -m training adapt --cells DIR`, on a
laboratory of N reviewed cells (Chula's training crops, each smear a slide), start to finish.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.calibration import field_colour_descriptor  # noqa: E402


def _labels(predictor: Any, images: list[Image.Image]) -> np.ndarray:
    out = []
    for start in range(0, len(images), 256):
        probs = predictor.forward(predictor.preprocess.batch(images[start : start + 256]), 1)
        out.append(probs.argmax(1))
    return np.concatenate(out) if out else np.empty(0, dtype=int)


def _accuracy(predictor: Any, images: list[Image.Image], labels: list[str]) -> float:
    pred = _labels(predictor, images)
    names = np.asarray(predictor.classes)[pred]
    return float((names == np.asarray(labels)).mean())


def _normal_calls(predictor: Any, images: list[Image.Image]) -> tuple[float, float]:
    """Of `images`: the share called normal, and the share called abnormal without the cell's
    own review flag (low confidence or unlike the training cells; the field-level flag of the
    service, which flags every abnormal call on an unfamiliar field, is not counted)."""
    called = predictor.predict(images)
    normal = np.asarray([p.label == "normal" for p in called])
    flagged = np.asarray([p.needs_review for p in called])
    return round(float(normal.mean()), 4), round(float((~normal & ~flagged).mean()), 4)


def _missed_abnormal(predictor: Any, images: list[Image.Image]) -> float:
    """Of abnormal cells: the share called normal without a review flag (missed unseen)."""
    called = predictor.predict(images)
    return round(float(np.mean([p.label == "normal" and not p.needs_review for p in called])), 4)


def _reviewed_first(
    rows: pd.DataFrame, n: int, called: list[Any], order: str = "queue"
) -> pd.DataFrame:
    """The `n` cells a technologist reviews by following each slide's review queue (the
    service's `teaching_order`, on the base model's calls of the laboratory's crops, `called`,
    one per row), or with `order="confidence"` the page's default list, least confident first:
    every slide to the same depth, its first cell, then its second, and so on."""
    from records.entities import CellRecord
    from records.views import teaching_order

    index = rows.index
    rows = rows.reset_index(drop=True)
    slide_of = {s: i + 1 for i, s in enumerate(sorted(rows["source_image"].unique()))}
    queues = []
    for smear, part in rows.groupby("source_image", sort=True):
        sid = slide_of[smear]
        records = [
            CellRecord(
                id=int(i) + 1,
                slide_id=sid,
                field_id=sid,
                kind="red_cell",
                x=0.0,
                y=0.0,
                box=(0, 0, 0, 0),
                at_border=False,
                counted=True,
                proposed_label=called[i].label,
                confidence=called[i].confidence,
                probabilities=called[i].probabilities,
                needs_review=called[i].needs_review,
                final_label=None,
                reviewed_by=None,
                reviewed_at=None,
                version=1,
            )
            for i in part.index
        ]
        if order == "confidence":
            ranked = sorted(records, key=lambda c: (c.confidence, c.id))
            queues.append([c.id - 1 for c in ranked])
        else:
            queues.append([q.cell.id - 1 for q in teaching_order(records, sid)])
    picked = [q[depth] for depth in range(max(map(len, queues))) for q in queues if depth < len(q)]
    return rows.loc[picked[:n]].set_axis(index[picked[:n]])


def _population(rows: pd.DataFrame, called: list[Any]) -> pd.DataFrame:
    """What import-slides writes as population.csv, for the crops `rows` (their index the cell
    id, each smear a slide of one field) and the base model's calls of them."""
    from records.entities import margin_of

    return pd.DataFrame(
        {
            "cell_id": rows.index,
            "source_image": rows["source_image"].to_numpy(),
            "proposed_label": [c.label for c in called],
            "margin": [margin_of(c.probabilities) for c in called],
        }
    )


def _lab_folder(
    dest: Path,
    rows: pd.DataFrame,
    crops: list[Image.Image],
    chula: Path,
    stats: ColourStats | None,
    population: pd.DataFrame | None = None,
) -> None:
    """An import-slides-shaped folder: each smear a slide of one field, each crop's row index
    its cell id; with `population` (`_population`), population.csv for the reviewed smears."""
    from training.datasets.slides import POPULATION_COLUMNS, POPULATION_FILE

    smears = sorted(rows["source_image"].unique())
    ids = {s: i + 1 for i, s in enumerate(smears)}
    manifest = []
    for (cell_id, row), crop in zip(rows.iterrows(), crops, strict=True):
        rel = f"{row['label']}/{Path(row['path']).stem}.png"
        (dest / row["label"]).mkdir(parents=True, exist_ok=True)
        crop.save(dest / rel)
        sid = ids[row["source_image"]]
        manifest.append(
            {
                "path": rel,
                "label": row["label"],
                "slide_id": sid,
                "field_id": sid,
                "cell_id": cell_id,
            }
        )
    pd.DataFrame(manifest).to_csv(dest / "manifest.csv", index=False)
    if population is not None:
        cells = population[population["source_image"].isin(ids)].copy()
        cells["slide_id"] = cells["field_id"] = cells["source_image"].map(ids)
        cells["reviewed"] = cells["cell_id"].isin(rows.index)
        cells[POPULATION_COLUMNS].to_csv(dest / POPULATION_FILE, index=False)
    fields = []
    for smear, sid in ids.items():
        with Image.open(chula / "Dataset" / smear) as field:
            rgb = field.convert("RGB")
            descriptor = field_colour_descriptor(recolour(rgb, stats) if stats else rgb)
        fields.append({"field_id": sid, **{f"c{i}": float(v) for i, v in enumerate(descriptor)}})
    pd.DataFrame(fields).to_csv(dest / "fields.csv", index=False)


def run_source(
    source: str, stats: ColourStats, test: pd.DataFrame, args: argparse.Namespace, base: Any
) -> dict[str, Any]:
    from core.classify.predictor import Predictor
    from training.adapt.pipeline import adapt_cells

    def crops(rows: pd.DataFrame, shifted: bool) -> list[Image.Image]:
        out = []
        for rel in rows["path"]:
            with Image.open(args.data / rel) as image:
                rgb = image.convert("RGB")
            out.append(recolour(rgb, stats) if shifted else rgb)
        return out

    smears = sorted(test["source_image"].unique())
    rng = np.random.default_rng(args.seed)
    rng.shuffle(smears)
    review_smears = set(smears[: len(smears) // 2])
    review = test[test["source_image"].isin(review_smears)]
    lab_classes = set(base.classes) | ({args.new_class} if args.new_class else set())
    review = review[review["label"].isin(lab_classes)]
    if args.review_classes:
        review = review[review["label"].isin(args.review_classes.split(","))]
    # The base model's calls of every crop of the reviewed smears, as the analysis kept them.
    slides = test[test["source_image"].isin(review_smears)]
    called = dict(zip(slides.index, base.predict(crops(slides, True)), strict=True))
    if args.order in ("queue", "confidence"):
        review = _reviewed_first(
            review, args.reviewed, [called[i] for i in review.index], args.order
        )
    else:
        review = review.sample(n=min(args.reviewed, len(review)), random_state=args.seed)
    evaluate = test[~test["source_image"].isin(review_smears)]
    known = evaluate[evaluate["label"].isin(base.classes)]

    with tempfile.TemporaryDirectory() as scratch:
        lab = Path(scratch) / "lab"
        population = None if args.no_population else _population(slides, list(called.values()))
        _lab_folder(lab, review, crops(review, True), args.chula, stats, population)
        started = time.perf_counter()
        adapt_cells(
            lab, Path(scratch) / "model", base=args.base, progress=False, say=lambda _: None
        )
        seconds = time.perf_counter() - started
        adapted = Predictor.load(Path(scratch) / "model", device="cpu", tta_views=1)
        summary = json.loads((Path(scratch) / "model" / "adaptation.json").read_text())
    shifted_known = crops(known, True)
    labels = list(known["label"])
    clean = _accuracy(base, crops(known, False), labels)
    shifted = _accuracy(base, shifted_known, labels)
    after = _accuracy(adapted, shifted_known, labels)
    all_test = test[test["label"].isin(base.classes)]
    clean_all = crops(all_test, False)
    row = {
        "source": source,
        "reviewed": len(review),
        "evaluated": len(known),
        "clean": round(clean, 4),
        "shifted": round(shifted, 4),
        "adapted": round(after, 4),
        "recovered": round((after - shifted) / (clean - shifted), 2) if clean > shifted else None,
        "chula_change": round(
            _accuracy(adapted, clean_all, list(all_test["label"]))
            - _accuracy(base, clean_all, list(all_test["label"])),
            4,
        ),
        "chosen": summary["fit"]["chosen"],
        "judging": summary["fit"].get("judging"),
        "seconds": round(seconds, 1),
        "candidates": summary["fit"]["candidates"],  # how each fit was judged
    }
    # What a clinic of healthy donors sees: the second half's normal cells, shifted.
    normal = known[known["label"] == "normal"]
    if len(normal):
        shifted_normal = crops(normal, True)
        for name, predictor in (("base", base), ("adapted", adapted)):
            row[f"normal_called_normal_{name}"], row[f"normal_abnormal_unflagged_{name}"] = (
                _normal_calls(predictor, shifted_normal)
            )
    abnormal = known[known["label"] != "normal"]
    if len(abnormal):
        shifted_abnormal = crops(abnormal, True)
        for name, predictor in (("base", base), ("adapted", adapted)):
            row[f"abnormal_called_normal_unflagged_{name}"] = _missed_abnormal(
                predictor, shifted_abnormal
            )
    if args.new_class:
        new = evaluate[evaluate["label"] == args.new_class]
        pred = np.asarray(adapted.classes)[_labels(adapted, crops(new, True))]
        row[f"{args.new_class}_recall"] = round(float((pred == args.new_class).mean()), 4)
    return row


def run_adapt(*options: str) -> tuple[float, list[str]]:
    """`python -m training adapt --no-progress OPTIONS` as a laboratory runs it (no
    RBC_DATABASE_URL of ours): its wall time and printed lines; SystemExit with its error."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RBC_DATABASE_URL"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training", "adapt", "--no-progress", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(done.stderr)
    return time.perf_counter() - started, done.stdout.splitlines()


def time_command(args: argparse.Namespace, manifest: pd.DataFrame) -> dict[str, Any]:
    """The wall time of `python -m training adapt --cells` on `args.time_cells` cells."""
    train = manifest[manifest["split"] == "train"].sample(n=args.time_cells, random_state=args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        lab = Path(scratch) / "lab"
        rows = list(train.itertuples())
        crops = []
        for row in rows:
            with Image.open(args.data / row.path) as image:
                crops.append(image.convert("RGB"))
        _lab_folder(lab, train, crops, args.chula, None)
        seconds, _ = run_adapt(
            "--cells", str(lab), "--out", str(Path(scratch) / "model"), "--base", str(args.base)
        )
    return {"cells": args.time_cells, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    from core.classify.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--base", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--reviewed", type=int, default=500)
    parser.add_argument("--sources", default="bccd,bcd,raabin")
    parser.add_argument("--new-class", help="a Chula class the base lacks, reviewed too")
    parser.add_argument(
        "--review-classes",
        help="review only these classes, comma-separated (normal: a clinic of healthy donors)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--order",
        choices=("random", "queue", "confidence"),
        default="random",
        help="which cells the laboratory reviews: drawn at random, each slide's review queue "
        "followed (the least-margin cells of each proposed class first, a tenth at random), or "
        "each slide's cells least confident first (the page's default list)",
    )
    parser.add_argument(
        "--no-population",
        action="store_true",
        help="write no population.csv: adapt judges the reviewed cells unweighed, as before "
        "stop 40 (import-slides writes one)",
    )
    parser.add_argument("--out", type=Path, help="JSON of every figure")
    parser.add_argument("--time-cells", type=int, help="time the command on this many cells")
    parser.add_argument(
        "--colour-stats", type=Path, default=Path(tempfile.gettempdir()) / "rbc-colour-stats.json"
    )
    args = parser.parse_args(argv)
    manifest = pd.read_csv(args.data / "manifest.csv")
    if args.time_cells:
        print(json.dumps(time_command(args, manifest)))
        return 0
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    base = Predictor.load(args.base, device="cpu", tta_views=1)
    rows = []
    for source in args.sources.split(","):
        rows.append(
            run_source(source, ColourStats.from_dict(sources[source]["stats"]), test, args, base)
        )
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows).drop(columns="candidates")
    print(table.to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
