"""A clinic of healthy donors on real foreign fields: what does the route do when its reviewers
call its red cells normal?

    .venv/bin/python research/txl_clinic_probe.py --source raabin \
        --out research/results/adapt/txl-clinic-raabin.json

bench/bench_lab_loop.py takes a laboratory through the route on Chula's smears recoloured to a
txl-pbc source's stain: a shift of colour only, milder than the real ones (a healthy donor's cells
65-74 % called normal there, 43 % on the laboratory of issue 27). Here the fields are the source's
own (txl-pbc: another laboratory's microscope, camera, smear thickness and crowding). They carry
no morphology labels, but they are routine smears of mostly normal red cells, so the reviewer is
simulated as a clinic of healthy donors reviews: every detected red cell that matches a txl-pbc
red-cell box is reviewed "normal". That is an assumption about the truth (some of those cells
would be called otherwise by a technologist), so the figures say what the route lets such a clinic
reach, not how right its model is.

1. The service (the real app in process, shipped classifier and detector, slides on a temporary
   SQLite file) gets `--slides` slides made of the source's train fields, created with the
   source's scale (7.5 um over its median red-cell box, data set's NOTES.md); each detected red
   cell matching a box centre is PATCHed "normal"; each slide is signed off.
2. `python -m training adapt --database URL --out DIR` runs as a laboratory runs it.
3. The source's test fields (used for nothing else) go through POST /analyze/smear with the same
   scale on the shipped and on the adapted model: the share of counted red cells called normal,
   called abnormal without a review flag, flagged, and the fields judged unfamiliar.
4. With `--data` (an import-chula crop set), what the two models do with Chula's labelled test
   crops, which are in neither model's training: as Chula took them (accuracy: what the clinic's
   model kept), and recoloured to the source's stain (bench/bench_shift.py): the share of
   abnormal cells called normal without the cell's own review flag (what a patient at this
   clinic would lose unseen; the stain is only a colour map, milder than the laboratory's
   real difference) and the share of normal cells called normal.
Nothing is chosen on these fields; adapt runs with its defaults. With `--l2` (a question, not the
product) adapt runs in this process with those pull strengths as its candidates instead; with
`--replay-mix balanced|training`, with the replayed cells class-balanced or weighed to the base's
training mix (adapt's own since stop 38).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_adapt import _accuracy, _missed_abnormal, _normal_calls, run_adapt  # noqa: E402
from bench.bench_lab_loop import _png, _service, _wait  # noqa: E402
from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from research.crops import fields_of, load_crops  # noqa: E402
from research.probe_fields import write_result  # noqa: E402

NORMAL_CELL_MICRONS = 7.5
Box = tuple[float, float, float, float]  # x centre, y centre, width, height (pixels)
MATCH_FRACTION = 0.35  # a detected centre within this share of the median box side of a box's


def red_boxes(txl: Path, rel: str, size: tuple[int, int]) -> list[Box]:
    """Each red-cell box of a field as (x centre, y centre, width, height), in pixels."""
    label = txl / (rel.replace("images/", "labels/").rsplit(".", 1)[0] + ".txt")
    width, height = size
    boxes = []
    for line in label.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "1":
            x, y, w, h = (float(v) for v in parts[1:])
            boxes.append((x * width, y * height, w * width, h * height))
    return boxes


def source_scale(txl: Path, fields: list[str]) -> tuple[float, float]:
    """The source's microns per pixel from its median red-cell box clear of the edge (as the
    data set's NOTES.md measures it), and that median side."""
    sides = []
    for rel in fields:
        with Image.open(txl / rel) as image:
            width, height = image.size
        for x, y, w, h in red_boxes(txl, rel, (width, height)):
            if w / 2 + 1 < x < width - w / 2 - 1 and h / 2 + 1 < y < height - h / 2 - 1:
                sides.append(max(w, h))
    median = float(np.median(sides))
    return NORMAL_CELL_MICRONS / median, median


def matched(cells: list[dict[str, Any]], boxes: list[Box], radius: float) -> list[dict[str, Any]]:
    from training.smear import match_points

    pairs = match_points([(c["x"], c["y"]) for c in cells], [(b[0], b[1]) for b in boxes], radius)
    return [cells[i] for i, _ in pairs]


def teach(
    client: Any, txl: Path, fields: list[str], slides: int, mpp: float, radius: float
) -> dict[str, int]:
    """Slides of the train fields, every matched red cell reviewed normal, each signed off."""
    reviewed, per_slide = 0, -(-len(fields) // slides)
    for s in range(0, len(fields), per_slide):
        slide = client.post(
            "/slides", json={"sample_id": f"DONOR-{s // per_slide}", "microns_per_pixel": mpp}
        )
        assert slide.status_code == 201, slide.text
        slide_id = slide.json()["id"]
        for rel in fields[s : s + per_slide]:
            with Image.open(txl / rel) as image:
                rgb = image.convert("RGB")
            added = client.post(
                f"/slides/{slide_id}/fields",
                files={"file": (Path(rel).stem + ".png", _png(rgb), "image/png")},
            )
            assert added.status_code == 201, added.text
            for cell in matched(added.json()["cells"], red_boxes(txl, rel, rgb.size), radius):
                done = client.patch(
                    f"/slides/{slide_id}/cells/{cell['id']}",
                    json={"version": cell["version"], "label": "normal"},
                )
                assert done.status_code == 200, done.text
                reviewed += 1
        version = client.get(f"/slides/{slide_id}").json()["version"]
        signed = client.post(f"/slides/{slide_id}/sign-off", json={"version": version})
        assert signed.status_code == 200, signed.text
    return {"reviewed": reviewed, "fields": len(fields)}


def measure(client: Any, txl: Path, fields: list[str], mpp: float) -> dict[str, Any]:
    called, flagged, unfamiliar, because = [], [], 0, Counter()
    for rel in fields:
        with Image.open(txl / rel) as image:
            rgb = image.convert("RGB")
        answer = client.post(
            "/analyze/smear",
            files={"file": (Path(rel).stem + ".png", _png(rgb), "image/png")},
            data={"microns_per_pixel": str(mpp)},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        unfamiliar += bool(body["familiarity"]["unfamiliar"])
        because.update(body["familiarity"].get("because", []))
        for cell in body["cells"]:
            if cell["counted"]:
                called.append(cell["label"])
                flagged.append(bool(cell["needs_review"]))
    c, f = np.asarray(called), np.asarray(flagged)
    normal = c == "normal"
    return {
        "fields": len(fields),
        "red_cells": len(c),
        "normal": round(float(normal.mean()), 4),
        "abnormal_unflagged": round(float((~normal & ~f).mean()), 4),
        "flagged": round(float(f.mean()), 4),
        "unfamiliar_fields": unfamiliar,
        "unfamiliar_because": dict(because),
        "called": dict(Counter(called).most_common()),
    }


def on_chula_crops(models: dict[str, Path], crops: Path, stats: ColourStats) -> dict[str, Any]:
    """Each model on Chula's test crops: accuracy as taken, and in the source's stain the
    normal cells called normal and the abnormal cells called normal without a flag."""
    from core.classify.predictor import Predictor

    manifest = pd.read_csv(crops / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    images = load_crops(crops, test["path"])
    labels = test["label"].tolist()
    shifted = [recolour(image, stats) for image in images]
    normal = [im for im, label in zip(shifted, labels, strict=True) if label == "normal"]
    abnormal = [im for im, label in zip(shifted, labels, strict=True) if label != "normal"]
    figures = {}
    for name, model in models.items():
        predictor = Predictor.load(model, device="cpu")
        known = set(predictor.classes)
        keep = [i for i, label in enumerate(labels) if label in known]
        figures[name] = {
            "chula_test_accuracy": round(
                _accuracy(predictor, [images[i] for i in keep], [labels[i] for i in keep]), 4
            ),
            "stained_normal_called_normal": _normal_calls(predictor, normal)[0],
            "stained_abnormal_called_normal_unflagged": _missed_abnormal(predictor, abnormal),
        }
    return {"crops": len(images), "normal": len(normal), "abnormal": len(abnormal), **figures}


def adapt_with_pulls(
    url: str, out: Path, pulls: list[float] | None, replay_mix: str | None = None
) -> tuple[float, list[str]]:
    """`adapt` as run_adapt runs it, in this process, with `pulls` as the candidates' l2 (None:
    adapt's own) and `replay_mix` ("training" or "balanced"; None: adapt's own) for the weight
    of the replayed cells' classes."""
    from training.adapt import pipeline

    lines: list[str] = []
    saved = pipeline.L2_CANDIDATES, pipeline.FIT_STEPS, pipeline.REPLAY_MIX
    if pulls:
        pipeline.L2_CANDIDATES = tuple(pulls)
        pipeline.FIT_STEPS = tuple(0.25 + 0.4 * k / len(pulls) for k in range(len(pulls)))
    if replay_mix:
        pipeline.REPLAY_MIX = replay_mix
    started = time.perf_counter()
    try:
        pipeline.adapt_from_database(url, out, progress=False, say=lines.append)
    finally:
        pipeline.L2_CANDIDATES, pipeline.FIT_STEPS, pipeline.REPLAY_MIX = saved
    return time.perf_counter() - started, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--source", default="raabin", choices=["bccd", "bcd", "raabin"])
    parser.add_argument("--slides", type=int, default=10)
    parser.add_argument(
        "--train-fields", type=int, default=0, help="how many train fields (0: all of them)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="an import-chula crop set (step 4)")
    parser.add_argument(
        "--colour-stats", type=Path, default=Path(tempfile.gettempdir()) / "rbc-colour-stats.json"
    )
    parser.add_argument("--keep", type=Path, help="copy the adapted model folder here")
    parser.add_argument(
        "--l2", help="the candidates' pull strengths, comma-separated (default: adapt's own)"
    )
    parser.add_argument(
        "--replay-mix",
        choices=("balanced", "training"),
        help="replayed cells weighed to the base's training mix (adapt's own since stop 38) or "
        "class-balanced (before)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train = fields_of(args.txl, args.source, "train")
    np.random.default_rng(args.seed).shuffle(train)
    if args.train_fields:
        train = train[: args.train_fields]
    test = fields_of(args.txl, args.source, "test")
    mpp, side = source_scale(args.txl, train)
    radius = MATCH_FRACTION * side
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "source": args.source,
        "microns_per_pixel": round(mpp, 4),
    }
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        with _service(ROOT / "models" / "default", data_dir) as client:
            _wait(client)
            started = time.perf_counter()
            result["teaching"] = teach(client, args.txl, train, args.slides, mpp, radius)
            result["teaching"]["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(result["teaching"]), flush=True)
            result["shipped"] = measure(client, args.txl, test, mpp)
        out = Path(scratch) / "lab-model"
        url = f"sqlite:///{data_dir / 'rbc.sqlite3'}"
        if args.l2 or args.replay_mix:
            pulls = [float(v) for v in args.l2.split(",")] if args.l2 else None
            seconds, lines = adapt_with_pulls(url, out, pulls, args.replay_mix)
        else:
            seconds, lines = run_adapt("--database", url, "--out", str(out))
        result["adapt_seconds"] = round(seconds, 1)
        result["adapt_output"] = lines
        adaptation = out / "adaptation.json"
        if adaptation.exists():
            result["adaptation"] = json.loads(adaptation.read_text())
        with _service(out, Path(scratch) / "data2") as client:
            _wait(client)
            result["adapted"] = measure(client, args.txl, test, mpp)
        if args.keep:
            shutil.copytree(out, args.keep)
        if args.data:
            sources, _, _ = colour_stats(
                args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False
            )
            stats = ColourStats.from_dict(sources[args.source]["stats"])
            models = {"shipped": ROOT / "models" / "default", "adapted": out}
            result["chula_crops"] = on_chula_crops(models, args.data, stats)
            print(json.dumps(result["chula_crops"]), flush=True)
    for key in ("shipped", "adapted"):
        r = result[key]
        print(
            f"{key:>8}: {r['red_cells']} red cells, normal {r['normal']:.3f}, abnormal unflagged "
            f"{r['abnormal_unflagged']:.3f}, flagged {r['flagged']:.3f}, unfamiliar fields "
            f"{r['unfamiliar_fields']}/{r['fields']}"
        )
    print("\n".join(lines))
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
