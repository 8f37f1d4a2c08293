"""Drive a MAX text-generation pipeline one batched step at a time.

What `max serve`'s scheduler does for a batch, minus the sampler: claim KV
cache for each sequence, and per step allocate pages, build the ragged
inputs, run the graph, feed back the chosen tokens. Used by the parity
harness (raw logits per step) and the engine benchmark (step times).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class Stepper:
    """One batch of sequences decoding together on a loaded pipeline."""

    def __init__(
        self, pipeline: Any, prompts: Sequence[Sequence[int]], max_length: int
    ) -> None:
        self.model = pipeline._pipeline_model  # the graph, without the sampler
        self.kv = pipeline.kv_manager
        self.max_length = max_length
        self.contexts: list[Any] = []
        self.restart(prompts)

    def restart(self, prompts: Sequence[Sequence[int]]) -> None:
        """Releases the batch and claims `prompts` as a new one, on the same
        loaded model: the next `step` is their prefill."""
        from max.pipelines.context import TextContext, TokenBuffer
        from max.pipelines.modeling.types import RequestID

        self.release()
        self.contexts = [
            TextContext(
                request_id=RequestID(),
                max_length=self.max_length,
                tokens=TokenBuffer(np.asarray(p, dtype=np.int64)),
            )
            for p in prompts
        ]
        for ctx in self.contexts:
            self.kv.claim(ctx, replica_idx=0)

    def step(self) -> tuple[np.ndarray, float]:
        """Runs the graph on every sequence's pending tokens: the last-token
        logits `[batch, vocab]` and the seconds `execute` took."""
        for ctx in self.contexts:
            self.kv.alloc(ctx).synchronize()
        batch = [self.contexts]
        inputs = self.model.prepare_initial_token_inputs(
            replica_batches=batch, kv_cache_inputs=self.kv.runtime_inputs(batch)
        )
        start = time.perf_counter()
        outputs = self.model.execute(model_inputs=inputs)
        logits = outputs.next_token_logits.to_numpy()
        elapsed = time.perf_counter() - start
        return np.array(logits, dtype=np.float32, copy=True), elapsed

    def feed(self, tokens: Sequence[int]) -> None:
        """Appends one token to each sequence, as the next step's input."""
        for ctx, token in zip(self.contexts, tokens, strict=True):
            ctx.update(int(token))
            self.kv.step(ctx)

    def release(self) -> None:
        for ctx in self.contexts:
            if self.kv.contains(ctx):
                self.kv.release(ctx)


@contextmanager
def stepper(
    checkpoint: str | Path,
    prompts: Sequence[Sequence[int]],
    max_length: int,
    *,
    devices: str = "cpu",
    encoding: str = "float32",
    weight_path: str | Path | None = None,
    architecture: object | None = None,
    enable_echo: bool = False,
) -> Iterator[Stepper]:
    """Loads the checkpoint (compiling on a cold cache) and claims the batch.

    `weight_path` loads other weights (a GGUF file) than the checkpoint
    directory's, which still supplies `config.json`. `architecture`
    defaults to this package's GPT-2; pass another `SupportedArchitecture`
    to run a peer or an injected variant. `enable_echo` builds the graph
    `--enable-echo` serves (every position's logits).
    """
    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    from max.pipelines import PIPELINE_REGISTRY, AutoModel

    if architecture is None:
        from gpt2_lmhead_model import gpt2_arch as architecture
    PIPELINE_REGISTRY.register(architecture, allow_override=True)  # type: ignore[arg-type]
    with AutoModel(
        str(checkpoint),
        max_batch_size=len(prompts),
        devices=devices,
        quantization_encoding=encoding,
        max_length=max_length,
        enable_echo=enable_echo,
        **({"weight_path": [str(weight_path)]} if weight_path else {}),
    ) as model:
        batch = Stepper(model.pipeline, prompts, max_length)
        try:
            yield batch
        finally:
            batch.release()
