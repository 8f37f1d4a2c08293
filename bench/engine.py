"""The engine alone: decode steps of a fixed batch, in process.

No HTTP, no scheduler, no sampler: the graph's `execute` on a batch of
sequences that all decode, as `max serve` would run them. The gap between
this and the served figure is what serving costs on this machine.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from gpt2_max.stepper import stepper


def decode_tokens_per_second(
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
) -> dict[str, float]:
    """Median decode-step time of `batch` sequences (the prefill excluded);
    with `prefill_tokens`, also the median of three prefills of one prompt
    that long, on the same loaded model."""
    prompts = [list(range(100 + i, 100 + i + prompt_len)) for i in range(batch)]
    times = []
    result: dict[str, float] = {"batch": batch}
    with stepper(
        checkpoint,
        prompts,
        max(prompt_len + steps, prefill_tokens) + 1,
        architecture=architecture,
        encoding=encoding,
        weight_path=weight_path,
    ) as sequences:
        for step in range(steps):
            logits, seconds = sequences.step()
            if step > warmup:  # step 0 is the prefill
                times.append(seconds)
            sequences.feed(logits.argmax(-1))
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
