"""The floors the benchmark is held to, each computed from its run.

Every ratio to a peer is of medians over turns (`served.py`,
`one_stream.py`, `xl.py`); every share of the bandwidth is per turn,
against the probes that bracketed that turn, with shares above 1 left
out as measurement errors (`ceilings.shares_summary`). A floor whose
figures were not measured (a peer skipped) reads None, never a guess.
"""

from __future__ import annotations

import statistics
from typing import Any

from . import ctranslate2_turns

FloorRow = tuple[str, float | None, float]


def _median_tps(side: dict[str, Any] | None, n: int) -> float | None:
    for level in (side or {}).get("levels", []):
        if level["concurrency"] == n:
            return statistics.median(level["turns"])
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def served_ratio(results: dict[str, Any], peer: str, n: int) -> float | None:
    """Ours over `peer` served at `n` streams: each the median of its
    turns, taken in the same rounds."""
    return ratio(_median_tps(results.get("ours"), n), _median_tps(results.get(peer), n))


def engine_tps(results: dict[str, Any], side: str, batch: int) -> float | None:
    turn = ((results.get(side) or {}).get("engine") or {}).get(str(batch))
    return statistics.median(turn["turns"]) if turn else None


def rows(results: dict[str, Any]) -> list[FloorRow]:
    many = max(results["workload"]["levels"])
    one = results.get("one_stream") or {}
    f32, q4_k = one.get("f32") or {}, one.get("q4_k") or {}
    xl = results.get("xl") or {}
    gemm = results["ceilings"]["large_batch_tokens_per_second"]
    found: list[FloorRow] = [
        (
            "engine, 1 stream, float32 / llama.cpp in process",
            f32.get("ratio_of_medians"),
            0.95,
        ),
        (
            "engine, 1 stream, float32 / bracketing read bandwidth",
            (f32.get("bandwidth_share") or {}).get("median"),
            0.85,
        ),
        (
            "max serve, 1 stream, float32 / llama.cpp in process",
            f32.get("served_ratio_of_medians"),
            0.85,
        ),
        (
            f"engine, {many} streams / GEMM ceiling",
            ratio(engine_tps(results, "ours", many), gemm),
            0.60,
        ),
        (
            f"max serve, {many} streams / vLLM CPU served",
            served_ratio(results, "vllm", many),
            1.5,
        ),
        (
            "q4_k engine, 1 stream / bracketing read bandwidth",
            (q4_k.get("bandwidth_share") or {}).get("median"),
            0.80,
        ),
    ]
    for encoding in ("f32", "q4_k"):
        found.append(
            (
                f"GPT-2 XL shape, {encoding}, engine 1 stream / llama.cpp",
                (xl.get(encoding) or {}).get("ratio_of_medians"),
                0.9,
            )
        )
    return found + ctranslate2_turns.floor_rows(results)


def bandwidth_errors(results: dict[str, Any]) -> list[str]:
    """Each turn that streamed more than its bracketing probes allowed."""
    errors = []
    for section in ("one_stream", "xl"):
        for label, row in (results.get(section) or {}).items():
            for value in (row.get("bandwidth_share") or {}).get(
                "measurement_errors", []
            ):
                errors.append(f"{section} {label}: {value:.2f}")
    return errors


def table(found: list[dict[str, Any]], errors: list[str]) -> str:
    lines = ["| floor | measured | required | met |", "| --- | ---: | ---: | --- |"]
    for row in found:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        value = "n/a" if row["measured"] is None else f"{row['measured']:.2f}"
        lines.append(f"| {row['floor']} | {value} | {row['required']:.2f} | {met} |")
    lines.append(
        "\n- shares of a bracketing bandwidth above 1 (measurement errors, left "
        f"out of every median): {', '.join(errors) if errors else 'none'}"
    )
    return "\n".join(lines)


def evaluate(found: list[FloorRow]) -> list[dict[str, Any]]:
    return [
        {
            "floor": name,
            "measured": value,
            "required": required,
            "met": None if value is None else value >= required,
        }
        for name, value, required in found
    ]
