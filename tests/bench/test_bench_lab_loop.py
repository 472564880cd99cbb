"""The simulated laboratory's route (bench/bench_lab_loop.py): which cells its technologist
reviews on a slide."""

from __future__ import annotations

import argparse
from typing import Any

from bench.bench_lab_loop import _review_order


class Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.status_code, self.text, self.body = 200, "", body

    def json(self) -> dict[str, Any]:
        return self.body


class Queue:
    """GET /slides/{id}/review-queue of a fixed order, paged as the service pages it."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.calls = ids, 0

    def get(self, url: str, params: dict[str, int]) -> Answer:
        assert url == "/slides/7/review-queue"
        self.calls += 1
        start, limit = params["offset"], params["limit"]
        items = [{"id": i, "version": 10 + i} for i in self.ids[start : start + limit]]
        return Answer({"items": items, "total": len(self.ids)})


def _args(order: str, k: int = 3) -> argparse.Namespace:
    return argparse.Namespace(order=order, reviews_per_slide=k, seed=0)


def test_the_queue_order_skips_cells_without_a_label_point_and_stops_at_k() -> None:
    ids = list(range(450, 0, -1))  # 450 cells: three pages of 200
    truth = {i: "normal" for i in ids if i % 2 == 0}  # only even cells have a label point
    client = Queue(ids)
    assert _review_order(client, 7, truth, _args("queue")) == [(450, 460), (448, 458), (446, 456)]
    assert client.calls == 3  # every page read
    assert len(_review_order(Queue(ids), 7, truth, _args("all"))) == 225


def test_random_order_reviews_as_many_of_the_same_cells() -> None:
    ids = list(range(1, 41))
    truth = {i: "normal" for i in ids}
    drawn = _review_order(Queue(ids), 7, truth, _args("random", 5))
    assert len(drawn) == 5 and len(set(drawn)) == 5 and drawn != [(i, 10 + i) for i in ids[:5]]
    assert drawn == _review_order(Queue(ids), 7, truth, _args("random", 5))  # seeded
