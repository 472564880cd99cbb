"""python -m training learn-other-labs: a model's last layer refitted with other laboratories'
red cells taught as normal: the tiny synthetic run's model as the base, its synthetic crop set,
synthetic YOLO fields of two "laboratories"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.synthetic import make_smear
from training.adapt.other_labs import learn_other_labs
from training.errors import DataError

BOX = 38  # the synthetic cells' diameter, pixels


def _yolo(root: Path, sources: tuple[str, ...] = ("lab-a", "lab-b")) -> Path:
    """Two train fields of each source, every interior red cell boxed (class 1)."""
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    rows = ["image,source,split"]
    for s, source in enumerate(sources):
        for i in range(2):
            image, interior, _ = make_smear(seed=10 * s + i)
            height, width = image.shape[:2]
            name = f"{source}-{i}"
            Image.fromarray(image).save(root / f"images/train/{name}.jpg", quality=95)
            lines = [
                f"1 {x / width:.5f} {y / height:.5f} {BOX / width:.5f} {BOX / height:.5f}"
                for x, y in interior
            ]
            (root / f"labels/train/{name}.txt").write_text("\n".join(lines) + "\n")
            rows.append(f"images/train/{name}.jpg,{source},train")
    (root / "sources.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("WBC\nRBC\nPlatelets\n")
    return root


@pytest.fixture(scope="module")
def taught(
    model_dir: Path, imported: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    from training.adapt.replay import add_replay

    root = tmp_path_factory.mktemp("other-labs")
    base = root / "base"
    shutil.copytree(model_dir, base)
    add_replay(base, imported, progress=False)
    yolo = _yolo(root / "txl")
    out = root / "models" / "wider"
    said: list[str] = []
    summary = learn_other_labs(
        base, imported, yolo, out, detector=None, weight=0.25, say=said.append
    )
    return {"summary": summary, "out": out, "said": said, "yolo": yolo, "root": root, "base": base}


def test_the_model_is_written_servable_with_its_new_layer(taught: dict[str, object]) -> None:
    from core.classify.predictor import Predictor

    out, summary = Path(str(taught["out"])), taught["summary"]
    assert isinstance(summary, dict)
    assert summary["weight"] == 0.25
    assert set(summary["other_lab_cells"]) == {"lab-a", "lab-b"}
    assert all(n > 0 for n in summary["other_lab_cells"].values())
    predictor = Predictor.load(out, device="cpu")  # every file's hash checked
    base = Predictor.load(Path(str(taught["base"])), device="cpu")
    assert predictor.classes == base.classes
    assert (predictor.calibration is None) == (base.calibration is None)  # carried as it was
    assert (out / "replay.npz").is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert "learn-other-labs" in card["notes"][-1]
    for figure in (card["metrics"]["accuracy"], card["metrics"]["macro_f1"]):
        assert f"{figure:.3f}" in card["notes"][-1]  # this model's figures, beside the base's
    assert card["training_config"]["other_labs"]["weight"] == 0.25
    # Measured again on the base's own test split, by the new learner; the report says so.
    assert card["metrics"]["split"] == "test" and card["metrics"]["n"] > 0
    report = (out / "report.md").read_text()
    assert "Last layer refitted with other laboratories' red cells" in report
    assert "## Evaluation on the test split" in report and (out / "confusion_test.png").is_file()
    # The new layer calls the other laboratories' cells normal more often than the base did.
    crops = [Image.fromarray(make_smear(seed=0)[0]).crop((41, 41, 79, 79))]
    normal = predictor.classes.index("normal")
    assert (
        predictor.forward(predictor.preprocess.batch(crops))[0, normal]
        > (base.forward(base.preprocess.batch(crops))[0, normal])
    )
    assert any("lab-a" in line for line in taught["said"])  # type: ignore[attr-defined]


def test_an_existing_folder_is_not_overwritten(taught: dict[str, object], imported: Path) -> None:
    out = Path(str(taught["out"]))
    before = (out / "model_card.json").read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        learn_other_labs(
            Path(str(taught["base"])), imported, Path(str(taught["yolo"])), out, detector=None
        )
    assert (out / "model_card.json").read_bytes() == before


def test_a_base_without_a_replay_set_is_refused(
    taught: dict[str, object], imported: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(Path(str(taught["base"])), base)
    card = json.loads((base / "model_card.json").read_text())
    card["replay_file"] = None
    card["replay_sha256"] = None
    (base / "model_card.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="replay"):
        learn_other_labs(base, imported, Path(str(taught["yolo"])), out, detector=None)
    assert not out.exists()


def test_a_folder_without_fields_is_refused(taught: dict[str, object], imported: Path) -> None:
    empty = Path(str(taught["root"])) / "empty"
    empty.mkdir()
    out = Path(str(taught["root"])) / "never"
    with pytest.raises(DataError, match="not a YOLO layout"):
        learn_other_labs(Path(str(taught["base"])), imported, empty, out, detector=None)
    assert not out.exists()


def test_a_crop_set_that_is_not_the_bases_is_refused(
    taught: dict[str, object], chula_src: Path, tmp_path: Path
) -> None:
    from training.datasets.chula import import_chula

    other = tmp_path / "crops"
    import_chula(chula_src, other, window=20, progress=False)  # another window: other bytes
    out = tmp_path / "out"
    with pytest.raises(DataError, match="fingerprint"):
        learn_other_labs(
            Path(str(taught["base"])), other, Path(str(taught["yolo"])), out, detector=None
        )
    assert not out.exists()
