"""research/white_cover.py: how much of a red cell's ellipse lies under a white cell's."""

from __future__ import annotations

import pytest

from research.white_cover import white_cell_cover

WHITE = (80.0, 80.0, 120.0, 120.0)


def test_cover_is_the_share_of_the_cells_ellipse_under_a_white_cells() -> None:
    assert white_cell_cover((90, 90, 110, 110), [WHITE]) == 1.0  # inside it
    assert white_cell_cover((130, 130, 150, 150), [WHITE]) == 0.0  # apart
    assert white_cell_cover((90, 90, 110, 110), []) == 0.0
    # Half of a cell under a white cell much larger than it (its edge nearly straight there).
    big = (-1000.0, -900.0, 100.0, 1100.0)
    assert white_cell_cover((90, 90, 110, 110), [big]) == pytest.approx(0.5, abs=0.05)
    # In the corner of the white cell's box, outside its round body: not under it.
    assert white_cell_cover((76, 76, 86, 86), [WHITE]) == 0.0
    # Beside it, touching: a sliver.
    assert 0 < white_cell_cover((115, 90, 135, 110), [WHITE]) < 0.2
