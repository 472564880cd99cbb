"""The name under which learners exported before training/classify/ find `LabShift`: fastai
pickled the class by its module path (models/default/export.pkl names training.labshift)."""

from training.classify.transforms import LabShift

__all__ = ["LabShift"]
