"""The installed size of an environment, and its largest distributions (issue 28: the service's
install on a CPU-only machine should stay under 1.5 GB).

    .venv/bin/python scripts/installed_size.py [--top 12]

Run with the environment's own interpreter: it sums the files every installed distribution
lists (its RECORD), and the whole site-packages folder beside them.
"""

from __future__ import annotations

import argparse
import sysconfig
from importlib import metadata
from pathlib import Path

GB = 1e9


def distribution_sizes() -> list[tuple[str, int]]:
    sizes = []
    for dist in metadata.distributions():
        total = 0
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
        sizes.append((dist.metadata["Name"] or "?", total))
    return sorted(sizes, key=lambda item: -item[1])


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=12, help="largest distributions shown")
    args = parser.parse_args()
    site = Path(sysconfig.get_paths()["purelib"])
    sizes = distribution_sizes()
    print(f"site-packages {site}: {folder_size(site) / GB:.2f} GB")
    for name, size in sizes[: args.top]:
        print(f"  {size / GB:6.3f} GB  {name}")


if __name__ == "__main__":
    main()
