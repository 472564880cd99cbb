"""A simulated laboratory through the route a real one takes: slides, reviews, sign-off, `adapt`,
the adapted model served.

    .venv/bin/python bench/bench_lab_loop.py --data /tmp/chula-crops --source raabin \
        [--slides 8 --fields-per-slide 3] [--order all|queue|random --reviews-per-slide 60] \
        [--out research/results/adapt/lab-loop-raabin.json]

The laboratory's fields are Chula's test smears recoloured to a txl-pbc source's stain and camera
(bench/bench_shift.py, the whole field: cell and background pixels each to the source's
statistics). Half the smears (seeded) are its reviewed slides, the rest measure.

1. The service (the real app, in process, with the shipped classifier and detector, slides on a
   temporary SQLite file) gets `--slides` slides of `--fields-per-slide` fields at 0.19 um per
   pixel; each red cell the detector found that matches a Chula label point (within 20 px,
   closest pairs first) is reviewed with PATCH to that label (Chula's elliptocytes, a class
   the model lacks, stay unreviewed; with `--review-classes normal` only the normal cells are
   reviewed, as a clinic of healthy donors would); each slide is signed off. With `--order
   queue --reviews-per-slide K` the technologist reviews only the first K of them in the
   slide's review queue (the service's order, the cells that teach most first); `--order
   random` reviews K of them drawn at random, the same count without the queue.
2. `python -m training adapt --database URL --out DIR` runs as a laboratory runs it.
3. The measuring fields go through POST /analyze/smear (scale given) on the base model (clean
   and recoloured fields) and on the adapted model (recoloured fields). Per service: accuracy of
   the counted red cells that match a label point, each class's recall and precision among
   them, the share of those cells called abnormal without a review flag, the fields judged
   unfamiliar; of the normal cells, the share called normal and called abnormal without a
   flag; of the abnormal cells, the share called normal without a flag. Chula's smears are rich
   in abnormal cells as a healthy clinic's are not, so the fields judged unfamiliar are also
   counted among the mostly normal fields (at least MOSTLY_NORMAL of their matched cells
   normal), and each field is listed (`per_field`: its matched cells, their normal share, and
   which signals judged it unfamiliar).
"""

from __future__ import annotations

import argparse
import io
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

from bench.bench_adapt import run_adapt  # noqa: E402
from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402

NORMAL = "normal"
MATCH_RADIUS_PX = 20
MOSTLY_NORMAL = 0.8  # a field like a healthy donor's: this share of its matched cells normal


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _points(chula: Path, smear: str) -> list[tuple[float, float, str]]:
    from training.datasets.chula import read_label_file

    labels = read_label_file(chula / "Label" / (Path(smear).stem + ".txt"))
    return [(float(p.x), float(p.y), p.label) for p in labels.points]


def _matched(
    cells: list[dict[str, Any]], points: list[tuple[float, float, str]]
) -> list[tuple[dict[str, Any], str]]:
    from training.smear import match_points

    pairs = match_points(
        [(c["x"], c["y"]) for c in cells], [(x, y) for x, y, _ in points], MATCH_RADIUS_PX
    )
    return [(cells[i], points[j][2]) for i, j in pairs]


def _service(model_dir: Path, data_dir: Path) -> Any:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    settings = Settings(
        model_dir=model_dir,
        detector_dir=ROOT / "models" / "detector",
        data_dir=data_dir,
        device="cpu",
        api_token=None,
    )
    return TestClient(create_app(settings))


def _wait(client: Any) -> None:
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.2)
    raise SystemExit("the model did not load")


def _review_order(
    client: Any, slide_id: int, truth: dict[int, str], args: argparse.Namespace
) -> list[tuple[int, int]]:
    """(cell id, version) of the cells the technologist reviews on a slide, in order: every
    cell with a label point (`--order all`), or the first `--reviews-per-slide` of them as
    the slide's review queue (GET /slides/{id}/review-queue) puts them (`queue`) or drawn at
    random (`random`). The queue's cells without a label point are passed over: nobody knows
    their class."""
    queue: list[dict[str, Any]] = []
    while True:
        page = client.get(
            f"/slides/{slide_id}/review-queue", params={"offset": len(queue), "limit": 200}
        )
        assert page.status_code == 200, page.text
        queue += page.json()["items"]
        if len(queue) >= page.json()["total"] or not page.json()["items"]:
            break
    known = [(c["id"], c["version"]) for c in queue if c["id"] in truth]
    if args.order == "all":
        return known
    if args.order == "random":
        rng = np.random.default_rng([args.seed, slide_id])
        known = [known[i] for i in rng.permutation(len(known))]
    return known[: args.reviews_per_slide]


def teach(
    client: Any, fields: list[tuple[str, Image.Image]], args: argparse.Namespace, classes: list[str]
) -> dict[str, int]:
    """Slides of the reviewed smears, each matched cell reviewed to its label, signed off."""
    reviewed, skipped = 0, 0
    per_slide = args.fields_per_slide
    for s in range(0, len(fields), per_slide):
        slide = client.post(
            "/slides", json={"sample_id": f"LAB-{s // per_slide}", "microns_per_pixel": 0.19}
        )
        assert slide.status_code == 201, slide.text
        slide_id = slide.json()["id"]
        truth: dict[int, str] = {}  # cell id -> its label point's class
        for smear, image in fields[s : s + per_slide]:
            added = client.post(
                f"/slides/{slide_id}/fields",
                files={"file": (smear + ".png", _png(image), "image/png")},
            )
            assert added.status_code == 201, added.text
            cells = added.json()["cells"]  # the field's red cells
            for cell, label in _matched(cells, _points(args.chula, smear)):
                if label not in classes:
                    skipped += 1
                    continue
                if args.review_classes and label not in args.review_classes.split(","):
                    continue  # a clinic that reviews only some classes leaves the rest
                truth[cell["id"]] = label
        for cell_id, version in _review_order(client, slide_id, truth, args):
            done = client.patch(
                f"/slides/{slide_id}/cells/{cell_id}",
                json={"version": version, "label": truth[cell_id]},
            )
            assert done.status_code == 200, done.text
            reviewed += 1
        version = client.get(f"/slides/{slide_id}").json()["version"]
        signed = client.post(f"/slides/{slide_id}/sign-off", json={"version": version})
        assert signed.status_code == 200, signed.text
    return {"reviewed": reviewed, "not_a_model_class": skipped}


def measure(
    client: Any, fields: list[tuple[str, Image.Image]], chula: Path, classes: list[str]
) -> dict[str, Any]:
    truth, called, flagged = [], [], []
    unfamiliar = 0
    per_field = []
    for smear, image in fields:
        answer = client.post(
            "/analyze/smear",
            files={"file": (smear + ".png", _png(image), "image/png")},
            data={"microns_per_pixel": "0.19"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        unfamiliar += bool(body["familiarity"]["unfamiliar"])
        counted = [c for c in body["cells"] if c["counted"]]
        labels = []
        for cell, label in _matched(counted, _points(chula, smear)):
            if label in classes:
                labels.append(label)
                truth.append(label)
                called.append(cell["label"])
                flagged.append(bool(cell["needs_review"]))
        per_field.append(
            {
                "smear": smear,
                "matched": len(labels),
                "normal_share": round(labels.count(NORMAL) / len(labels), 3) if labels else None,
                "unfamiliar": bool(body["familiarity"]["unfamiliar"]),
                "because": body["familiarity"].get("because", []),
            }
        )
    t, c, f = np.asarray(truth), np.asarray(called), np.asarray(flagged)
    normal, abnormal = t == NORMAL, t != NORMAL
    per_class = {}
    for name in sorted(set(truth) | set(called)):
        hits = int(((t == name) & (c == name)).sum())
        per_class[name] = {
            "recall": round(hits / max(1, int((t == name).sum())), 4),
            "precision": round(hits / max(1, int((c == name).sum())), 4),
            "support": int((t == name).sum()),
        }
    mostly_normal = [
        f for f in per_field if f["normal_share"] is not None and f["normal_share"] >= MOSTLY_NORMAL
    ]
    return {
        "fields": len(fields),
        "unfamiliar_fields": unfamiliar,
        "mostly_normal_fields": len(mostly_normal),
        "mostly_normal_unfamiliar": sum(f["unfamiliar"] for f in mostly_normal),
        "cells": len(t),
        "accuracy": round(float((t == c).mean()), 4),
        "abnormal_unflagged": round(float(((c != NORMAL) & ~f).mean()), 4),
        "flagged": round(float(f.mean()), 4),
        # What a clinic of healthy donors sees, and what a patient would lose unseen.
        "normal_called_normal": round(float((c[normal] == NORMAL).mean()), 4),
        "normal_called_abnormal_unflagged": round(
            float(((c[normal] != NORMAL) & ~f[normal]).mean()), 4
        ),
        "abnormal_called_normal_unflagged": round(
            float(((c[abnormal] == NORMAL) & ~f[abnormal]).mean()), 4
        ),
        "per_class": per_class,
        "per_field": per_field,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="an import-chula crop set (its test smears)"
    )
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--source", default="raabin")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--fields-per-slide", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--order",
        choices=("all", "queue", "random"),
        default="all",
        help="which of a slide's cells with a label point are reviewed: all of them, or the "
        "first --reviews-per-slide in the slide's review queue, or that many at random",
    )
    parser.add_argument("--reviews-per-slide", type=int, default=60)
    parser.add_argument(
        "--review-classes",
        help="review only cells of these labels, comma-separated (normal: a clinic of healthy "
        "donors); the others stay as the model called them, unreviewed",
    )
    parser.add_argument(
        "--colour-stats", type=Path, default=Path(tempfile.gettempdir()) / "rbc-colour-stats.json"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from core.modelcard import ModelCard

    classes = list(ModelCard.load(ROOT / "models" / "default").classes)
    manifest = pd.read_csv(args.data / "manifest.csv")
    smears = sorted(manifest[manifest["split"] == "test"]["source_image"].unique())
    np.random.default_rng(args.seed).shuffle(smears)
    n_teach = args.slides * args.fields_per_slide
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    stats = ColourStats.from_dict(sources[args.source]["stats"])

    def field(smear: str, shifted: bool) -> tuple[str, Image.Image]:
        with Image.open(args.chula / "Dataset" / smear) as image:
            rgb = image.convert("RGB")
        return Path(smear).stem, recolour(rgb, stats) if shifted else rgb

    teach_fields = [field(s, True) for s in smears[:n_teach]]
    measured = smears[n_teach:]
    result: dict[str, Any] = {"command": " ".join(sys.argv), "source": args.source}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        with _service(ROOT / "models" / "default", data_dir) as client:
            _wait(client)
            started = time.perf_counter()
            result["teaching"] = teach(client, teach_fields, args, classes)
            result["teaching"]["seconds"] = round(time.perf_counter() - started, 1)
            result["base_clean"] = measure(
                client, [field(s, False) for s in measured], args.chula, classes
            )
            result["base_shifted"] = measure(
                client, [field(s, True) for s in measured], args.chula, classes
            )
        out = Path(scratch) / "lab-model"
        seconds, lines = run_adapt(
            "--database", f"sqlite:///{data_dir / 'rbc.sqlite3'}", "--out", str(out)
        )
        result["adapt_seconds"] = round(seconds, 1)
        result["adapt_output"] = lines
        with _service(out, Path(scratch) / "data2") as client:
            _wait(client)
            result["adapted_shifted"] = measure(
                client, [field(s, True) for s in measured], args.chula, classes
            )
    for key in ("base_clean", "base_shifted", "adapted_shifted"):
        r = result[key]
        print(
            f"{key:>16}: accuracy {r['accuracy']:.3f} on {r['cells']} cells, abnormal "
            f"unflagged {r['abnormal_unflagged']:.3f}, flagged {r['flagged']:.3f}, unfamiliar "
            f"fields {r['unfamiliar_fields']}/{r['fields']} (mostly normal ones "
            f"{r['mostly_normal_unfamiliar']}/{r['mostly_normal_fields']}); normal cells called "
            f"normal {r['normal_called_normal']:.3f}, abnormal cells called normal unflagged "
            f"{r['abnormal_called_normal_unflagged']:.3f}"
        )
    print("\n".join(result["adapt_output"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
