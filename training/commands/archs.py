"""archs: the architectures both pipelines can build (training/archs.py)."""

from __future__ import annotations

import argparse

from training.commands.shared import Subparsers


def register(sub: Subparsers) -> None:
    _add_archs(sub)


def _cmd_archs(args: argparse.Namespace) -> None:
    from training.archs import ARCHS

    for spec in ARCHS.values():
        print(f"{spec.name:20s} {spec.family:18s} ImageNet size {spec.native_size}")


def _add_archs(sub: Subparsers) -> None:
    p = sub.add_parser("archs", help="list the architectures")
    p.set_defaults(func=_cmd_archs)
