"""docs/BRINGUP.md cites code as `path::symbol`; every citation must exist."""

from __future__ import annotations

import re
from pathlib import Path

import max as max_package

ROOT = Path(__file__).resolve().parents[2]
MAX_ROOT = Path(next(iter(max_package.__path__))).resolve().parent
DOC = (ROOT / "docs" / "BRINGUP.md").read_text()

CITATION = re.compile(
    r"`?((?:max|gpt2_lmhead_model|gpt2_max|tests)/[\w/]+\.py)(?:::([\w.]+))?"
)


def resolve(path: str) -> Path:
    return (MAX_ROOT if path.startswith("max/") else ROOT) / path


def defines(source: str, symbol: str) -> bool:
    name = symbol.split(".")[-1]
    return (
        re.search(
            rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*[:=]", source, re.M
        )
        is not None
    )


def test_every_cited_file_and_symbol_exists():
    citations = CITATION.findall(DOC)
    assert len(citations) > 20
    for path, symbol in citations:
        file = resolve(path)
        assert file.is_file(), f"{path} does not exist"
        if symbol:
            assert defines(file.read_text(), symbol), f"{path}::{symbol} not found"
