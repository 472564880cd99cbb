"""A laboratory teaches the classifier its own microscope from its own reviews (issue #27).

- `replay`: the base model's training cells, kept beside it as the features its last layer
  reads, so that adapting needs no copy of the base data set and does not forget it;
- `cells`: the lab's reviewed cells (an `import-slides` output) as features, split by slide;
- `head`: the last layer refitted on the lab's cells and the replayed ones;
- `figures`: before / after on held-out reviewed cells;
- `pipeline`: `python -m training adapt`, from the records database to a servable model folder.
"""

from pathlib import Path

# What a laboratory adapts unless told otherwise: the shipped classifier. Here, not in the
# pipeline, so that building the command line's parser imports no torch.
DEFAULT_BASE = Path(__file__).resolve().parents[2] / "models" / "default"
