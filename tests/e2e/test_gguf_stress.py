"""The quantized path under repetition: batches of varied shapes, each run
more than once, must give every step within the parity bound and the very
same logits each time the same batch runs.

Written after one full-suite run saw a single q4_k step at relative error
0.686 (every other step ~0.016) under heavy CPU load, not reproduced since:
a transient wrong step would show here as a mismatch between repeats.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_max.checkpoints import write_checkpoint
from gpt2_max.gguf_export import write_gguf
from gpt2_max.parity import (
    max_greedy_decode,
    relative_error,
    transformers_greedy_decode,
)

from ..conftest import prompts_for_window
from ..llama_cpp_gpt2 import dequantized_checkpoint
from .test_gguf_parity import QUANTIZED, SMALL_CONFIG

pytestmark = pytest.mark.slow

STEPS = 33
# Batches of different shapes and orders, each run twice.
BATCHES = [[0, 1, 2, 3], [2], [3, 1], [0, 1, 2, 3]]


def test_q4_k_logits_repeat_exactly_across_batches(tmp_path, tokenizer):
    checkpoint = write_checkpoint(tmp_path / "small", SMALL_CONFIG, seed=5)
    path = write_gguf(checkpoint, tmp_path / "small-q4_k.gguf", "q4_k")
    reference = dequantized_checkpoint(path, checkpoint, tmp_path / "ref")
    prompts = prompts_for_window(tokenizer, SMALL_CONFIG["n_positions"], STEPS - 1)
    prompts.append(prompts[1][:7])
    oracle = transformers_greedy_decode(reference, prompts, STEPS)
    _, bound, _ = QUANTIZED["q4_k"]

    first: dict[tuple[tuple[int, ...], int, int], np.ndarray] = {}
    for _ in range(2):
        for batch in BATCHES:
            ours = max_greedy_decode(
                checkpoint,
                [prompts[i] for i in batch],
                STEPS,
                encoding="q4_k",
                weight_path=path,
                forced=[oracle.tokens[i] for i in batch],
            )
            for step, logits in enumerate(ours.logits):
                for row, i in enumerate(batch):
                    error = relative_error(logits[row], oracle.logits[step][i])
                    assert error <= bound, (batch, step, i, error)
                    key = (tuple(batch), i, step)
                    seen = first.setdefault(key, logits[row].copy())
                    assert np.array_equal(seen, logits[row]), (batch, step, i)
