"""research/review_curve.py: adapt's gain against the cells reviewed, from bench_adapt's runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.review_curve import main, read_runs


def _run(path: Path, reviewed: int, recovered: float, chosen: str) -> Path:
    row = {
        "source": "raabin",
        "reviewed": reviewed,
        "shifted": 0.8,
        "adapted": 0.8 + recovered * 0.08,
        "recovered": recovered,
        "chula_change": -0.001,
        "chosen": chosen,
    }
    path.write_text(json.dumps({"command": "bench_adapt", "rows": [row]}))
    return path


def test_runs_are_read_by_source_in_order_of_reviews_and_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    more = _run(tmp_path / "a.json", 1000, 0.5, "l2=0.1")
    fewer = _run(tmp_path / "b.json", 250, 0.0, "base")
    assert [r["reviewed"] for r in read_runs([more, fewer])["raabin"]] == [250, 1000]
    out = tmp_path / "curve.png"
    assert main([str(more), str(fewer), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "raabin       250" in printed and "base" in printed and "50%" in printed


def test_runs_in_another_order_are_their_own_curve(tmp_path: Path) -> None:
    random = _run(tmp_path / "r.json", 500, 0.0, "base")
    queue = _run(tmp_path / "q.json", 500, 0.4, "l2=0.1")
    run = json.loads(queue.read_text())
    run["command"] = "bench/bench_adapt.py --data d --order queue --out q.json"
    queue.write_text(json.dumps(run))
    by_source = read_runs([random, queue])
    assert sorted(by_source) == ["raabin", "raabin (queue)"]
    assert by_source["raabin (queue)"][0]["recovered"] == 0.4
    assert main([str(random), str(queue), "--out", str(tmp_path / "c.png")]) == 0
