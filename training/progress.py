"""Progress for long CPU work in logs, where fastai's bars would be noise."""

from __future__ import annotations

import time
from typing import Any


def batch_progress(every_s: float = 30.0) -> Any:
    """A callback that prints where an epoch stands every `every_s` seconds, for logs where
    fastai's bars are off (a long CPU epoch otherwise prints nothing for minutes)."""
    from fastai.callback.core import Callback

    class BatchProgress(Callback):
        order = 60

        def before_epoch(self) -> None:
            self.started = self.last = time.perf_counter()

        def after_batch(self) -> None:
            now = time.perf_counter()
            if self.training and now - self.last >= every_s:
                self.last = now
                done, total = self.iter + 1, self.n_iter
                eta = (now - self.started) / done * (total - done)
                stage = "lr_find" if hasattr(self.learn, "lr_finder") else "epoch"
                print(
                    f"  {stage} {self.epoch + 1}/{self.n_epoch}: batch {done}/{total}, "
                    f"loss {float(self.smooth_loss):.4f}, about {eta:.0f} s left in this epoch",
                    flush=True,
                )

    return BatchProgress()


def epoch_logger(learn: Any) -> Any:
    """One readable line per epoch (fastai's Recorder hands over [epoch, *values, time])."""

    def log_epoch(values: list[Any]) -> None:
        names = list(learn.recorder.metric_names)
        parts = [
            f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}"
            for n, v in zip(names, values, strict=False)
        ]
        print("  ".join(parts), flush=True)

    return log_epoch
