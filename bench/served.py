"""Served throughput at each concurrency, every server in turns.

All servers being compared (ours, MAX's Llama, vLLM CPU) are up at once,
and each level is measured on each of them in turn, round after round,
the others paused meanwhile (`only`: an idle MAX server polls about a
tenth of a core, which would tax whoever is measured beside it); `transformers`, the
in-process baseline, takes its turn at the same batch size in a process
of its own. Every figure is then the median of its turns, and every ratio
between two sides is of figures taken within the same minute or two: on
these machines a figure moves 10-30 % between moments of a run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpt2_max.server import ServerProcess

from . import peers
from .load import LevelResult, run_level
from .turns import in_own_process, median_turn
from .workload import prompts


@contextmanager
def only(
    running: ServerProcess | None, servers: Iterable[ServerProcess]
) -> Iterator[None]:
    """Every server of `servers` but `running` paused (SIGSTOP) meanwhile."""
    paused = [srv for srv in servers if srv is not running]
    for srv in paused:
        srv.pause()
    try:
        yield
    finally:
        for srv in paused:
            srv.resume()


def level_summary(level: LevelResult) -> dict[str, Any]:
    gaps = sorted(g for s in level.streams for g in s.inter_token)
    if len(gaps) > 1:
        pct = statistics.quantiles(gaps, n=100)
    else:
        pct = [gaps[0] if gaps else 0.0] * 99
    return {
        "concurrency": level.concurrency,
        "tokens_per_second": level.tokens_per_second,
        "output_tokens": level.output_tokens,
        "wall_seconds": level.wall_seconds,
        "itl_p50_ms": pct[49] * 1000,
        "itl_p99_ms": pct[98] * 1000,
    }


def transformers_turn(
    checkpoint: Path, batch: list[list[int]], max_tokens: int, threads: int
) -> dict[str, float]:
    """`peers.transformers_throughput` in a process of its own, so torch's
    threads do not linger in the benchmark's process beside the servers."""
    return in_own_process(
        peers.transformers_throughput, checkpoint, batch, max_tokens, threads
    )


def levels_in_turns(
    servers: dict[str, ServerProcess],
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
    rounds: int,
    ttft_lengths: list[int],
    transformers: Callable[[list[list[int]]], dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """`{side: {"levels": [median turn per level], "ttft_seconds": {...}}}`
    for each server, and `{"transformers": {str(batch): median turn}}`."""
    for srv in servers.values():
        run_level(srv.url, srv.model, prompts(tokenizer, 2, 16), 4)  # warm-up
    turns: dict[str, dict[int, list[dict[str, Any]]]] = {
        side: {n: [] for n in levels} for side in [*servers, "transformers"]
    }
    ttft: dict[str, dict[int, list[float]]] = {
        side: {n: [] for n in ttft_lengths} for side in servers
    }
    for turn in range(rounds):
        for n in levels:
            batch = prompts(tokenizer, n, 32)
            for side, srv in servers.items():
                print(f"[served] {n} streams, {side}, turn {turn + 1} of {rounds}")
                with only(srv, servers.values()):
                    level = run_level(srv.url, srv.model, batch, max_tokens)
                turns[side][n].append(level_summary(level))
            if transformers is not None:
                with only(None, servers.values()):
                    turns["transformers"][n].append(transformers(batch))
        for length in ttft_lengths:
            prompt = prompts(tokenizer, 1 + turn, length)[turn]
            for side, srv in servers.items():
                with only(srv, servers.values()):
                    first = run_level(srv.url, srv.model, [prompt], 2).streams[0].ttft
                ttft[side][length].append(first)
    result: dict[str, dict[str, Any]] = {
        side: {
            "levels": [median_turn(turns[side][n]) for n in levels],
            "ttft_seconds": {
                str(n): statistics.median(times) for n, times in ttft[side].items()
            },
        }
        for side in servers
    }
    if transformers is not None:
        result["transformers"] = {
            str(n): median_turn(turns["transformers"][n]) for n in levels
        }
    return result
