"""The house in figures (issue 26): lines of product and of research, the largest product files,
functions of 80 lines and more, the README's length. Reads the tree as it is; no imports of it.

    .venv/bin/python scripts/house_figures.py [--root DIR] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PRODUCT = ("core", "app", "records", "training")
BENCHMARKS = ("bench",)
# Before issue 26 the probes lived in bench/ beside the benchmarks: `--probes-in-bench` counts
# bench/ files that are not bench_*.py as research, so an old tree compares with a new one.
RESEARCH = ("research",)
LONG_FUNCTION = 80


def python_files(root: Path, tops: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for top in tops
        for p in (root / top).rglob("*.py")
        if "migrations" not in p.parts or top != "records"
    )


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_functions(path: Path, root: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length >= LONG_FUNCTION:
                found.append((f"{path.relative_to(root)}:{node.name}", length))
    return found


def figures(root: Path, probes_in_bench: bool = False) -> dict[str, object]:
    product = python_files(root, PRODUCT)
    bench = python_files(root, BENCHMARKS)
    research = python_files(root, RESEARCH)
    if probes_in_bench:
        research += [p for p in bench if not p.name.startswith(("bench_", "__"))]
        bench = [p for p in bench if p not in research]
    sizes = sorted(((str(p.relative_to(root)), lines(p)) for p in product), key=lambda x: -x[1])
    long = sorted((f for p in product for f in long_functions(p, root)), key=lambda x: -x[1])
    readme = root / "README.md"
    return {
        "product_lines": sum(n for _, n in sizes),
        "benchmark_lines": sum(lines(p) for p in bench),
        "research_lines": sum(lines(p) for p in research),
        "largest_files": sizes[:8],
        "functions_80_plus": long,
        "readme_lines": lines(readme) if readme.is_file() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--probes-in-bench", action="store_true", help="a tree from before research/ existed"
    )
    args = parser.parse_args()
    found = figures(args.root, args.probes_in_bench)
    if args.json:
        print(json.dumps(found, indent=1))
        return
    print(f"product lines ({', '.join(PRODUCT)}): {found['product_lines']:,}")
    print(f"benchmark lines ({', '.join(BENCHMARKS)}): {found['benchmark_lines']:,}")
    print(f"research lines: {found['research_lines']:,}")
    print(f"README lines: {found['readme_lines']}")
    print("largest product files:")
    for name, n in found["largest_files"]:  # type: ignore[attr-defined]
        print(f"  {n:5d}  {name}")
    print(f"functions of {LONG_FUNCTION}+ lines: {len(found['functions_80_plus'])}")  # type: ignore[arg-type]
    for name, n in found["functions_80_plus"]:  # type: ignore[attr-defined]
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
