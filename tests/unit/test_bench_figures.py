"""Every benchmark figure the README and docs/BENCHMARKS.md publish is one
`./run bench` printed: it appears in the committed table.md, and table.md
is what `bench.report` renders from the committed results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import publish, report

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "bench" / "results.json"
TABLE = ROOT / "docs" / "bench" / "table.md"

DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")
"""A decimal figure; dotted versions (26.7.0, 0.3.36) are not figures."""
CODE = re.compile(r"`[^`]*`")
"""Inline code: flags and settings (`--gpu-memory-utilization 0.3`), not figures."""
NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])")


def readme_benchmarks() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Benchmarks")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def table_figures() -> set[str]:
    return set(NUMBER.findall(TABLE.read_text()))


def test_table_md_is_rendered_from_results_json():
    results = json.loads(RESULTS.read_text())
    assert report.render(results) == TABLE.read_text()


def test_each_number_in_the_readme_benchmark_table_is_in_the_cited_results():
    section = readme_benchmarks()
    assert "docs/bench/table.md" in section and "docs/bench/results.json" in section
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ][1:]  # the header row names columns
    assert rows, "the README's benchmark section has no table"
    figures = table_figures()
    for row in rows:
        values = "|".join(row.split("|")[2:])  # the first cell names the row
        for number in NUMBER.findall(values):
            assert number in figures, f"README figure {number} ({row[:60]}...)"


def test_each_decimal_figure_in_the_benchmark_prose_is_in_the_cited_results():
    figures = table_figures()
    for name, text in (
        ("README.md", readme_benchmarks()),
        ("docs/BENCHMARKS.md", (ROOT / "docs" / "BENCHMARKS.md").read_text()),
    ):
        missing = sorted(set(DECIMAL.findall(CODE.sub("", text))) - figures)
        assert not missing, f"{name}: figures not in {TABLE.name}: {missing}"


def test_publishing_puts_the_runs_table_between_the_markers(tmp_path):
    (tmp_path / "bench").mkdir()
    page = f"# B\n\nprose\n{publish.BEGIN}\nold\n{publish.END}\n\nmore prose\n"
    (tmp_path / "BENCHMARKS.md").write_text(page)
    run = tmp_path / "run"
    run.mkdir()
    for name in publish.FILES:
        (run / name).write_text(f"{name} of the run\n")
    publish.publish(run, docs=tmp_path)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert text == page.replace("\nold\n", "\ntable.md of the run\n")
    assert (
        tmp_path / "bench" / "results.json"
    ).read_text() == "results.json of the run\n"
    with pytest.raises(ValueError, match="markers"):
        publish.splice("no markers", "x")


def test_the_page_carries_the_published_table_whole():
    page = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert publish.splice(page, TABLE.read_text()) == page
