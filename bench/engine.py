"""The engine alone: decode steps of a fixed batch, in process.

No HTTP, no scheduler, no sampler: the graph's `execute` on a batch of
sequences that all decode, as `max serve` would run them. The gap between
this and the served figure is what serving costs on this machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def decode_tokens_per_second(
    checkpoint: str | Path,
    batch: int,
    *,
    architecture: Any | None = None,
    prompt_len: int = 32,
    steps: int = 40,
    warmup: int = 5,
) -> dict[str, float]:
    from max.pipelines import PIPELINE_REGISTRY, AutoModel
    from max.pipelines.context import TextContext, TokenBuffer
    from max.pipelines.modeling.types import RequestID

    if architecture is not None:
        PIPELINE_REGISTRY.register(architecture, allow_override=True)
    max_length = prompt_len + steps + 1
    with AutoModel(
        str(checkpoint),
        max_batch_size=batch,
        devices="cpu",
        quantization_encoding="float32",
        max_length=max_length,
    ) as model:
        pipeline = model.pipeline
        pipeline_model = pipeline._pipeline_model  # type: ignore[attr-defined]
        kv = pipeline.kv_manager
        contexts = [
            TextContext(
                request_id=RequestID(),
                max_length=max_length,
                tokens=TokenBuffer(
                    np.arange(100 + i, 100 + i + prompt_len, dtype=np.int64)
                ),
            )
            for i in range(batch)
        ]
        for ctx in contexts:
            kv.claim(ctx, replica_idx=0)
        times = []
        for step in range(steps):
            for ctx in contexts:
                kv.alloc(ctx).synchronize()
            inputs = pipeline_model.prepare_initial_token_inputs(
                replica_batches=[contexts],
                kv_cache_inputs=kv.runtime_inputs([contexts]),
            )
            start = time.perf_counter()
            logits = pipeline_model.execute(model_inputs=inputs).logits.to_numpy()
            elapsed = time.perf_counter() - start
            if step >= warmup and step > 0:  # step 0 is the prefill
                times.append(elapsed)
            for ctx, token in zip(contexts, logits.argmax(-1), strict=True):
                ctx.update(int(token))
                kv.step(ctx)
        for ctx in contexts:
            kv.release(ctx)
    step_s = statistics.median(times)
    return {
        "batch": batch,
        "step_ms": step_s * 1000,
        "tokens_per_second": batch / step_s,
    }
