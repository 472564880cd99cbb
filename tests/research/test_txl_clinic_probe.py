"""research/txl_clinic_probe.py: a source's red-cell boxes, its scale, and which detected cells
a simulated reviewer calls normal."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from research.txl_clinic_probe import matched, red_boxes, source_scale


def _field(root: Path, name: str, lines: list[str], size: tuple[int, int] = (200, 100)) -> str:
    rel = f"images/train/{name}.jpg"
    (root / "images/train").mkdir(parents=True, exist_ok=True)
    (root / "labels/train").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(root / rel)
    (root / f"labels/train/{name}.txt").write_text("\n".join(lines) + "\n")
    return rel


def test_red_boxes_are_read_in_pixels_and_white_cells_left_out(tmp_path: Path) -> None:
    rel = _field(tmp_path, "a", ["1 0.5 0.5 0.1 0.2", "0 0.2 0.2 0.3 0.3"])
    assert red_boxes(tmp_path, rel, (200, 100)) == [(100.0, 50.0, 20.0, 20.0)]


def test_the_scale_comes_from_cells_clear_of_the_edge(tmp_path: Path) -> None:
    inside = ["1 0.5 0.5 0.1 0.2", "1 0.25 0.5 0.1 0.2", "1 0.75 0.5 0.15 0.2"]  # 20, 20, 30 px
    cut = ["1 0.01 0.5 0.02 0.2"]  # a box touching the left edge, 4 px wide
    rel = _field(tmp_path, "b", inside + cut)
    mpp, side = source_scale(tmp_path, [rel])
    assert side == pytest.approx(20.0)
    assert mpp == pytest.approx(7.5 / 20.0)


def test_only_cells_near_a_box_centre_are_reviewed() -> None:
    cells = [{"id": 1, "x": 100.0, "y": 50.0}, {"id": 2, "x": 10.0, "y": 90.0}]
    boxes = [(103.0, 52.0, 20.0, 20.0), (160.0, 50.0, 20.0, 20.0)]
    assert [c["id"] for c in matched(cells, boxes, radius=7.0)] == [1]


def test_other_pulls_are_adapts_candidates_for_one_run_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from research.txl_clinic_probe import adapt_with_pulls
    from training.adapt import pipeline

    before = pipeline.L2_CANDIDATES, pipeline.FIT_STEPS
    seen = {}

    def fake(url: str, out: Path, **kwargs: object) -> dict[str, object]:
        seen["pulls"], seen["steps"] = pipeline.L2_CANDIDATES, pipeline.FIT_STEPS
        kwargs["say"]("Chosen: l2=0.001")  # type: ignore[operator]
        return {}

    monkeypatch.setattr(pipeline, "adapt_from_database", fake)
    seconds, lines = adapt_with_pulls("sqlite:///x", tmp_path / "o", [0.001, 0.01, 0.1, 1.0])
    assert seen["pulls"] == (0.001, 0.01, 0.1, 1.0) and len(seen["steps"]) == 4
    assert lines == ["Chosen: l2=0.001"] and seconds >= 0
    assert before == (pipeline.L2_CANDIDATES, pipeline.FIT_STEPS)


def test_the_replay_mix_is_set_for_one_run_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from research.txl_clinic_probe import adapt_with_pulls
    from training.adapt import pipeline

    before = pipeline.REPLAY_MIX
    seen = {}

    def fake(url: str, out: Path, **kwargs: object) -> dict[str, object]:
        seen["mix"], seen["pulls"] = pipeline.REPLAY_MIX, pipeline.L2_CANDIDATES
        return {}

    monkeypatch.setattr(pipeline, "adapt_from_database", fake)
    adapt_with_pulls("sqlite:///x", tmp_path / "o", None, "balanced")
    assert seen == {"mix": "balanced", "pulls": (0.01, 0.1, 1.0)}
    assert before == pipeline.REPLAY_MIX
