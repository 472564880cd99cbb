"""Command line: python -m training COMMAND ...  (see --help of each command)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from core.modelcard import ModelFileError
from training.commands import adapt, archs, classify, detect, imports, smears
from training.errors import TrainingError

# Each group registers its own commands; --help lists them in this order.
COMMAND_GROUPS = (imports, classify, adapt, smears, detect, archs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        # A serving install (scripts/serve.sh, the Docker image) carries no torch.
        print(
            "error: the training commands need torch, which this install lacks (a serving "
            "install): install the training extras with `scripts/install.sh --train`",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except (TrainingError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
