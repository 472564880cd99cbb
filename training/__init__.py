"""Training subpackage: the importers (`datasets/`), the classifier's pipeline (`classify/`) and
the cell detector's (`detect/`), the two of the same shape, and their CLI (`python -m training`,
one module of `commands/` a group)."""
