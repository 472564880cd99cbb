"""research/adapt_gate_probe.py: what the gate refused, and whether that fit would have helped."""

from __future__ import annotations

from typing import Any

from research.adapt_gate_probe import compare


def _row(source: str, chosen: str, adapted: float, shifted: float = 0.80) -> dict[str, Any]:
    regained = round((adapted - shifted) / (0.88 - shifted), 2)
    return {
        "source": source,
        "shifted": shifted,
        "adapted": adapted,
        "recovered": regained,
        "chula_change": -0.001,
        "chosen": chosen,
    }


def test_compare_says_whether_a_refused_fit_would_have_helped() -> None:
    gated = [_row("a", "base", 0.80), _row("b", "base", 0.80), _row("c", "l2=0.1", 0.84)]
    open_ = [_row("a", "l2=0.1", 0.83), _row("b", "l2=0.01", 0.78), _row("c", "l2=0.1", 0.84)]
    rows = compare(gated, open_)
    assert [r["gate_refused_a_fit_that"] for r in rows] == ["helped", "hurt or did nothing", None]
    assert rows[0]["gate_off"]["regained"] == 0.37 and rows[0]["gated"]["regained"] == 0.0
