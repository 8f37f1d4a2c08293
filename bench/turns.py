"""What measuring in turns needs, in one place: a measurement in a fresh
process, the median turn of a side, and the ratio of two sides' medians.

A measurement runs in a process of its own because once a MAX model has
run in a process, a runtime thread keeps polling (~10 % of a core, idle),
and torch's threads linger likewise: either would tax every server and
peer measured after it from the benchmark's process.
"""

from __future__ import annotations

import multiprocessing
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def in_own_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a fresh (spawned) process, which inherits
    this process's environment."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
        return child.submit(fn, *args, **kwargs).result()


def median_turn(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """The turn of median speed (the lower one of an even count), whole,
    with every turn's speed beside it."""
    ranked = sorted(turns, key=lambda turn: turn["tokens_per_second"])
    return {
        **ranked[(len(ranked) - 1) // 2],
        "turns": [turn["tokens_per_second"] for turn in turns],
    }


def ratio_of_medians(ours: list[float], theirs: list[float]) -> float | None:
    """median(ours) / median(theirs), not the median of the ratios; None
    where a side has no turns."""
    if not ours or not theirs:
        return None
    return statistics.median(ours) / statistics.median(theirs)
