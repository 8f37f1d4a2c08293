"""Publish one `./run bench` run as the project's figures:

    python -m bench.publish artifacts/bench

copies its results.json, table.md and throughput.png to docs/bench/ and
puts table.md, whole, between the markers in docs/BENCHMARKS.md, so the
page's tables are the run's own text (`tests/unit/test_bench_figures.py`
holds the page and the README to that file).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
FILES = ("results.json", "table.md", "throughput.png")
BEGIN = "<!-- bench/table.md: begin -->"
END = "<!-- bench/table.md: end -->"


def splice(page: str, table: str) -> str:
    """`page` with the text between its markers replaced by `table`."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"docs/BENCHMARKS.md has no {BEGIN} ... {END} markers")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table.strip()}\n{END}{tail}"


def publish(run: Path, docs: Path = DOCS) -> None:
    for name in FILES:
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name}: not a finished ./run bench output")
    for name in FILES:
        shutil.copyfile(run / name, docs / "bench" / name)
    page = docs / "BENCHMARKS.md"
    page.write_text(splice(page.read_text(), (run / "table.md").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="a ./run bench --out directory")
    publish(parser.parse_args().run)


if __name__ == "__main__":
    main()
