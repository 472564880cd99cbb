"""The exported fastai learner (export.pkl), for training, evaluation and export: fastai is a
training dependency, never the service's (which loads model_state.pt through core.classify.nets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.modelcard import ModelCard, ModelFileError, verified_weights_path


def load_exported(model_dir: Path, device: str = "cpu") -> tuple[Any, ModelCard]:
    """Load an exported fastai learner after the hash check. Returns (learner, card)."""
    import warnings

    from fastai.learner import load_learner

    weights, card = verified_weights_path(model_dir)
    with warnings.catch_warnings():
        # fastai warns that load_learner unpickles; the hash check above is why it is safe here.
        warnings.simplefilter("ignore", UserWarning)
        learn = load_learner(weights, cpu=(device == "cpu"))
    if list(map(str, learn.dls.vocab)) != list(card.classes):
        raise ModelFileError(
            f"classes in {weights} ({list(learn.dls.vocab)}) differ from the card ({card.classes})"
        )
    return learn, card
