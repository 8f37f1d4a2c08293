"""Perplexity of a text, scored in overlapping windows of the context.

As in `transformers`' perplexity guide: a text longer than `n_positions`
is cut into windows of `n_positions` tokens that start `stride` tokens
apart, and each window scores only the tokens the previous one did not,
so every token is predicted from at least `n_positions - stride` tokens of
context. Unlike the guide's bookkeeping (which subtracts one token per
window), every token but the first is counted exactly once.

`perplexity` runs in process on MAX (every position's logits, the graph
`--enable-echo` builds); `api_token_logprobs` scores the same windows
through `max serve`'s OpenAI API (`echo` + `logprobs`, `max_tokens: 0`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Window:
    """Tokens `[begin, end)` go in; those in `[score_from, end)` are scored."""

    begin: int
    end: int
    score_from: int


def windows(n_tokens: int, size: int, stride: int) -> list[Window]:
    """The guide's windows over `n_tokens` tokens."""
    if not 0 < stride <= size:
        raise ValueError(f"stride must be in [1, {size}], got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    out: list[Window] = []
    scored = 1  # the first token has nothing to be predicted from
    for begin in range(0, n_tokens, stride):
        end = min(begin + size, n_tokens)
        out.append(Window(begin, end, scored))
        scored = end
        if end == n_tokens:
            break
    return out


def perplexity_of(
    ids: Sequence[int],
    size: int,
    stride: int,
    score: Callable[[Sequence[int]], Sequence[float | None]],
) -> tuple[float, int]:
    """exp(mean negative log-likelihood) and the number of tokens scored.

    `score(window_ids)` returns each window token's log-probability given
    the tokens before it in the window (`None` for the first).
    """
    total, count = 0.0, 0
    for w in windows(len(ids), size, stride):
        logprobs = score(ids[w.begin : w.end])
        wanted = logprobs[w.score_from - w.begin :]
        if any(lp is None for lp in wanted) or len(wanted) != w.end - w.score_from:
            raise ValueError("the scorer returned no log-probability for a token")
        total -= sum(float(lp) for lp in wanted if lp is not None)
        count += len(wanted)
    return math.exp(total / count), count


def api_token_logprobs(
    client: Any, model: str
) -> Callable[[Sequence[int]], list[float | None]]:
    """A scorer for `perplexity_of` through `max serve --enable-echo`."""

    def score(window_ids: Sequence[int]) -> list[float | None]:
        out = client.completions.create(
            model=model,
            prompt=list(window_ids),
            echo=True,
            logprobs=0,
            max_tokens=0,
        )
        return list(out.choices[0].logprobs.token_logprobs)

    return score


def log_softmax_rows(logits: np.ndarray, targets: Sequence[int]) -> list[float]:
    """log p(targets[i] | row i), in float64."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    picked = rows[np.arange(len(targets)), np.asarray(targets)]
    return [float(v) for v in picked - lse]


def perplexity(
    checkpoint: str | Path,
    ids: Sequence[int],
    *,
    stride: int | None = None,
    devices: str = "cpu",
) -> tuple[float, int]:
    """Perplexity of `ids` under the checkpoint, run on MAX in process."""
    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    from max.pipelines import PIPELINE_REGISTRY, AutoModel
    from max.pipelines.context import TextContext, TokenBuffer
    from max.pipelines.modeling.types import RequestID
    from transformers import AutoConfig

    from gpt2_lmhead_model import gpt2_arch

    size = int(AutoConfig.from_pretrained(str(checkpoint)).n_positions)
    stride = stride or size // 2
    windows(len(ids), size, stride)  # bad input fails before the model loads
    PIPELINE_REGISTRY.register(gpt2_arch, allow_override=True)  # type: ignore[arg-type]
    with AutoModel(
        str(checkpoint),
        max_batch_size=1,
        devices=devices,
        max_length=size,
        enable_echo=True,
    ) as model:
        pipeline = model.pipeline
        graph, kv = pipeline._pipeline_model, pipeline.kv_manager

        def score(window_ids: Sequence[int]) -> list[float | None]:
            ctx = TextContext(
                request_id=RequestID(),
                max_length=size,
                tokens=TokenBuffer(np.asarray(window_ids, dtype=np.int64)),
            )
            kv.claim(ctx, replica_idx=0)
            try:
                kv.alloc(ctx).synchronize()
                batch = [[ctx]]
                inputs = graph.prepare_initial_token_inputs(
                    replica_batches=batch, kv_cache_inputs=kv.runtime_inputs(batch)
                )
                logits = graph.execute(model_inputs=inputs).logits.to_numpy()
            finally:
                kv.release(ctx)
            return [None, *log_softmax_rows(logits[:-1], window_ids[1:])]

        return perplexity_of(ids, size, stride, score)
