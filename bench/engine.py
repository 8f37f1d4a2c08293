"""The engine alone: decode steps of a fixed batch, in process.

No HTTP, no scheduler, no sampler: the graph's `execute` on a batch of
sequences that all decode, as `max serve` would run them. The gap between
this and the served figure is what serving costs on this machine.

Each measurement runs in a fresh process: once a model has run, MAX's
runtime keeps a thread polling (~10 % of a core, idle), which would
otherwise take CPU from every server and peer the benchmark runs after it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from gpt2_max.stepper import stepper

from .ceilings import BandwidthProbe, Bracket
from .turns import in_own_process, median_turn


def decode_tokens_per_second(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`measure_decode` in a process of its own (see the module docstring)."""
    return in_own_process(measure_decode, *args, **kwargs)


def measure_decode(
    checkpoint: str | Path,
    batch: int,
    *,
    architecture: Any | None = None,
    encoding: str = "float32",
    weight_path: Path | None = None,
    prompt_len: int = 32,
    steps: int = 40,
    warmup: int = 5,
    prefill_tokens: int = 0,
    probe_threads: int = 0,
) -> dict[str, Any]:
    """Median decode-step time of `batch` sequences (the prefill excluded);
    with `prefill_tokens`, also the median of three prefills of one prompt
    that long, on the same loaded model. With `probe_threads`, the decode
    steps are bracketed by bandwidth probes (`ceilings.Bracket`) taken in
    this process with that many threads, just before and just after."""
    prompts = [list(range(100 + i, 100 + i + prompt_len)) for i in range(batch)]
    times = []
    result: dict[str, Any] = {"batch": batch}
    probe = BandwidthProbe(probe_threads) if probe_threads else None
    with stepper(
        checkpoint,
        prompts,
        max(prompt_len + steps, prefill_tokens) + 1,
        architecture=architecture,
        encoding=encoding,
        weight_path=weight_path,
    ) as sequences:
        bracket = Bracket(probe.measure()) if probe else None
        for step in range(steps):
            logits, seconds = sequences.step()
            if step > warmup:  # step 0 is the prefill
                times.append(seconds)
            sequences.feed(logits.argmax(-1))
        if probe and bracket:
            bracket.after = probe.measure()
            result["bandwidth"] = bracket.as_dict()
        if prefill_tokens:
            prefills = []
            for repeat in range(3):
                sequences.restart(
                    [list(range(100 + repeat, 100 + repeat + prefill_tokens))]
                )
                prefills.append(sequences.step()[1])
            result["prefill_tokens"] = prefill_tokens
            result["prefill_seconds"] = statistics.median(prefills)
    step_s = statistics.median(times)
    return {**result, "step_ms": step_s * 1000, "tokens_per_second": batch / step_s}


def in_turns(
    sides: dict[str, tuple[Path, dict[str, Any]]], batch: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each side's engine alone at `batch`, alternating, `rounds` turns:
    `{side: median turn}`."""
    turns: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for turn in range(rounds):
        for side, (checkpoint, kwargs) in sides.items():
            print(f"[engine] {side}, batch {batch}, turn {turn + 1} of {rounds}")
            turns[side].append(decode_tokens_per_second(checkpoint, batch, **kwargs))
    return {side: median_turn(t) for side, t in turns.items()}
