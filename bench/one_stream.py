"""One stream, ours against llama.cpp on the same files, in turns.

Single figures of either move 10-30 % between moments of a run on these
machines, and the machine's bandwidth with them, so every ratio here is
of medians over turns that alternate within a minute or two: ours (the
engine alone, in a process of its own, its decode steps bracketed by
bandwidth probes; on the files a server is up for, also `max serve`)
then llama.cpp in process on the same GGUF file. The servers stay up
through every turn, paused (SIGSTOP) but while they serve theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt2_lmhead_model import gpt2_arch
from gpt2_max.server import ServerProcess

from . import ceilings, engine, peer_llama_cpp
from .load import run_level
from .served import only
from .turns import ratio_of_medians
from .workload import gguf_serving


def turns(
    checkpoint: Path,
    files: dict[str, Path],
    llama_cpp_python: Path | None,
    *,
    why_not: str = "",
    threads: int,
    rounds: dict[str, int],
    prefill_tokens: int,
    served: dict[str, ServerProcess] | None = None,
    served_prompt: list[int] | None = None,
    max_tokens: int = 128,
    bytes_per_token: dict[str, float],
    engine_measure: Callable[..., dict[str, Any]] = engine.decode_tokens_per_second,
    llama_cpp_measure: Callable[..., dict[str, Any]] = peer_llama_cpp.measure,
) -> dict[str, Any]:
    """For each file (label -> GGUF; "f32" runs our float32 checkpoint),
    `rounds[label]` turns. `served` (label -> a running server of that
    file) also serves `served_prompt` in each of that file's turns.
    Without llama.cpp (`llama_cpp_python` None, `why_not` says why) ours
    runs alone.
    `bytes_per_token` (label -> bytes a decode step reads) turns each
    engine turn into a share of its bracketing bandwidth probes."""
    results: dict[str, Any] = {}
    servers = list((served or {}).values())
    with only(None, servers):
        for label, path in files.items():
            results[label] = _file_turns(
                checkpoint, label, path, llama_cpp_python, why_not, threads,
                rounds[label], prefill_tokens, served or {},
                served_prompt, max_tokens, bytes_per_token[label],
                engine_measure, llama_cpp_measure,
            )  # fmt: skip
    return results


def _file_turns(
    checkpoint: Path,
    label: str,
    path: Path,
    llama_cpp_python: Path | None,
    why_not: str,
    threads: int,
    rounds: int,
    prefill_tokens: int,
    served: dict[str, ServerProcess],
    served_prompt: list[int] | None,
    max_tokens: int,
    bytes_per_token: float,
    engine_measure: Callable[..., dict[str, Any]],
    llama_cpp_measure: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """One file's turns (see `turns`), with every server paused."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    served_tps: list[float] = []
    for turn in range(rounds):
        print(f"[one stream] {label}, turn {turn + 1} of {rounds}")
        if label == "f32":
            kwargs: dict[str, Any] = {"architecture": gpt2_arch}
        else:
            encoding, weight_path = gguf_serving(path)
            kwargs = {"encoding": encoding, "weight_path": weight_path}
        ours.append(
            engine_measure(
                checkpoint,
                1,
                prefill_tokens=prefill_tokens,
                probe_threads=threads,
                **kwargs,
            )
        )
        server = served.get(label)
        if server is not None:
            server.resume()
            try:
                level = run_level(server.url, server.model, [served_prompt], max_tokens)
            finally:
                server.pause()
            served_tps.append(level.tokens_per_second)
        if llama_cpp_python is None:
            theirs = [{"skipped": why_not}]
            continue
        row = llama_cpp_measure(
            llama_cpp_python,
            {label: path},
            threads=threads,
            prefill_tokens=prefill_tokens,
        )[label]
        if "skipped" in row:
            theirs = [row]
            break
        theirs.append(row)
    return summarize(ours, theirs, served_tps, bytes_per_token)


def summarize(
    ours: list[dict[str, Any]],
    theirs: list[dict[str, Any]],
    served: list[float],
    bytes_per_token: float,
) -> dict[str, Any]:
    """Each side's turns, the ratios of their medians, and the shares of
    the bracketing bandwidth (`ceilings.shares_summary`)."""
    ours_tps = [t["tokens_per_second"] for t in ours]
    result: dict[str, Any] = {
        "ours": ours,
        "ours_tokens_per_second": ours_tps,
        "bytes_per_token": bytes_per_token,
        "bandwidth_share": ceilings.shares_summary(
            [
                ceilings.share(t["tokens_per_second"], bytes_per_token, b["gbs"])
                for t in ours
                if (b := t.get("bandwidth"))
            ]
        ),
    }
    if served:
        result["served_tokens_per_second"] = served
    if theirs and "skipped" in theirs[0]:
        return {**result, "llama.cpp": {"skipped": theirs[0]["skipped"]}}
    their_tps = [t["tokens_per_second"] for t in theirs]
    result |= {
        "llama.cpp": theirs,
        "llama_cpp_tokens_per_second": their_tps,
        "ratio_of_medians": ratio_of_medians(ours_tps, their_tps),
        "prefill_speed_ratio": ratio_of_medians(
            [t["prefill_seconds"] for t in theirs],
            [t["prefill_seconds"] for t in ours if "prefill_seconds" in t],
        ),
    }
    if served:
        result["served_ratio_of_medians"] = ratio_of_medians(served, their_tps)
    return result
