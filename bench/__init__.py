"""Benchmarks of what users get: speed, memory and hostile input through the service, smear
analysis, the classifier under other laboratories' stains. They print figures and compare against
the simplest alternative in the same run.

Installed with the project (pyproject.toml), so that they import the product and each other
through the installed package, never by editing sys.path: `.venv/bin/python bench/bench_smear.py`
from any folder. The experiments that answered one question each are in research/.
"""
