"""GGUF files, as `gpt2-max convert` writes them, through MAX.

float32 GGUF is held to the safetensors bar against the original
checkpoint. A quantized file cannot match the float weights it came from,
so its oracle is `transformers` on the file's own weights, dequantized;
the quantized matmuls then differ from it only by what the kernels do to
activations: MAX's `ops.qmatmul` (Q4_0, Q6_K) and our `panel_q4k_linear`
(Q4_K on CPU) and `panel_q8_linear` (Q8_0 on CPU) round them to 8 bits,
then run integer dot products. Decoding is
teacher-forced with the oracle's tokens, so every step compares the two on
the same inputs.

The config is small (one compile per encoding) but has K-quant-sized rows
(256) and GPT-2's 50257-token head, which the loader pads for the kernels.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from gpt2_max.checkpoints import DISTILGPT2_CONFIG, write_checkpoint
from gpt2_max.gguf_export import write_gguf
from gpt2_max.gguf_unpack import main_encoding, unpack
from gpt2_max.parity import (
    compare,
    max_greedy_decode,
    relative_error,
    transformers_greedy_decode,
)

from ..conftest import prompts_for_window
from ..llama_cpp_gpt2 import dequantized_checkpoint

pytestmark = pytest.mark.slow

SMALL_CONFIG = {
    **DISTILGPT2_CONFIG,
    "n_embd": 256,
    "n_head": 4,
    "n_layer": 2,
    "n_inner": 512,
    "n_positions": 128,
    "n_ctx": 128,
}
TOLERANCE = 1e-4  # float32 GGUF: the safetensors bar (tests/e2e/test_parity.py)
DECODE_STEPS = 32
STEPS = DECODE_STEPS + 1

# Relative logit error allowed per encoding (measured: ~1.3e-2 for q4_0,
# ~1.8e-2 for q6_k and q4_k_m; q4_k 0.93e-2 on `panel_q4k_linear`, 1.34e-2
# when it ran on MAX's qmatmul; q8_0 0.95e-2 on `panel_q8_linear`, 99/99
# tokens agreeing). It is the kernels' activation quantization, not the
# weights': q6_k's weights round-trip 4x closer than q4_k's
# (tests/unit/test_gguf_convert.py) yet its error here is no smaller. Q8_0 is
# held to issue 23's bar for llama.cpp users' near-lossless choice: 1 %
# and 0.99 of the greedy tokens (0.95 for the others).
QUANTIZED = {
    # file encoding: (--quantization-encoding, logit bound, greedy agreement)
    "q8_0": ("float32", 0.01, 0.99),  # MAX 26.7 has no q8_0 encoding
    "q4_0": ("q4_0", 0.025, 0.95),
    "q4_k": ("q4_k", 0.03, 0.95),
    "q6_k": ("q6_k", 0.03, 0.95),
    "q4_k_m": ("q4_k", 0.03, 0.95),  # mixed: Q6_K for the head and some ffn_down
}
MIN_GREEDY_AGREEMENT = 0.95
Q8_0_BOUND = 0.02  # measured 0.83e-2 on `panel_q8_linear`


@pytest.fixture(scope="module")
def small(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("gguf")
    checkpoint = write_checkpoint(root / "small", SMALL_CONFIG, seed=5)
    prompts = prompts_for_window(tokenizer, SMALL_CONFIG["n_positions"], DECODE_STEPS)
    return root, checkpoint, prompts


def test_float32_gguf_matches_transformers(small):
    root, checkpoint, prompts = small
    path = write_gguf(checkpoint, root / "small-f32.gguf", "f32")
    ours = max_greedy_decode(
        checkpoint, prompts, STEPS, encoding="float32", weight_path=path
    )
    oracle = transformers_greedy_decode(checkpoint, prompts, STEPS)
    report = compare(ours, oracle, prompts)
    for prompt in report.prompts:
        assert prompt.first_divergence is None, prompt
        assert prompt.max_rel_error <= TOLERANCE, prompt.max_rel_error


@pytest.mark.parametrize("file_encoding", list(QUANTIZED))
def test_quantized_gguf_matches_its_dequantized_weights(small, file_encoding):
    root, checkpoint, _ = small
    path = write_gguf(checkpoint, root / f"small-{file_encoding}.gguf", file_encoding)
    # The encoding `./run serve FILE.gguf` passes (`gpt2-max unpack`).
    assert main_encoding(gguf.GGUFReader(path)) == QUANTIZED[file_encoding][0]
    check_against_dequantized(small, path, file_encoding)


def check_against_dequantized(small, path, file_encoding: str) -> None:
    """Ours on the GGUF file at `path`, teacher-forced on `transformers`'
    greedy tokens over the file's weights dequantized, held to the
    encoding's bar in `QUANTIZED`."""
    root, checkpoint, prompts = small
    encoding, bound, agreement = QUANTIZED[file_encoding]
    reference = dequantized_checkpoint(path, checkpoint, root / f"ref-{file_encoding}")
    oracle = transformers_greedy_decode(reference, prompts, STEPS)
    ours = max_greedy_decode(
        checkpoint,
        prompts,
        STEPS,
        encoding=encoding,
        weight_path=path,
        forced=oracle.tokens,
    )
    assert_quantized_parity(ours, oracle, len(prompts), file_encoding, bound, agreement)


def assert_quantized_parity(
    ours,
    oracle,
    prompts: int,
    label: str,
    bound: float,
    min_agreement: float = MIN_GREEDY_AGREEMENT,
):
    """Teacher-forced logits within `bound` of the oracle's, greedy tokens
    agreeing, and an error only a quantized kernel makes."""
    errors = [
        relative_error(a[i], b[i])
        for a, b in zip(ours.logits, oracle.logits, strict=True)
        for i in range(prompts)
    ]
    agreement = np.mean(
        [
            a == b
            for x, y in zip(ours.tokens, oracle.tokens, strict=True)
            for a, b in zip(x, y, strict=True)
        ]
    )
    assert max(errors) <= bound, (label, max(errors))
    assert agreement >= min_agreement, (label, agreement)
    # Exact float matmuls on dequantized weights would agree to ~1e-6: an
    # error this size says the quantized kernels ran, not a silent
    # dequantize-at-load fallback.
    assert min(errors) > TOLERANCE, (label, min(errors))


# Rows of 160 and 320 are not whole 256-value K-quant blocks, so a q4_k file
# stores every matrix in Q8_0, as llama.cpp does for GPT-2 XL's 1600.
Q8_0_FALLBACK_CONFIG = {**SMALL_CONFIG, "n_embd": 160, "n_head": 5, "n_inner": 320}


def test_q8_0_matrices_match_their_dequantized_weights(tmp_path, tokenizer):
    """Q8_0 runs on `panel_q8_linear`, whose activations are rounded to int8
    per 32 values: held to a bound like the other quantized kernels."""
    checkpoint = write_checkpoint(tmp_path / "q8", Q8_0_FALLBACK_CONFIG, seed=6)
    path = write_gguf(checkpoint, tmp_path / "q8.gguf", "q4_k")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    matrices = [n for n in types if n.endswith(("attn_qkv.weight", "ffn_up.weight"))]
    assert matrices and all(
        types[n] == gguf.GGMLQuantizationType.Q8_0
        for n in [*matrices, "token_embd.weight"]
    )
    prompts = prompts_for_window(
        tokenizer, Q8_0_FALLBACK_CONFIG["n_positions"], DECODE_STEPS
    )
    reference = dequantized_checkpoint(path, checkpoint, tmp_path / "ref")
    oracle = transformers_greedy_decode(reference, prompts, STEPS)
    ours = max_greedy_decode(
        checkpoint,
        prompts,
        STEPS,
        encoding="q4_k",
        weight_path=path,
        forced=oracle.tokens,
    )
    assert_quantized_parity(ours, oracle, len(prompts), "q8_0", Q8_0_BOUND)


@pytest.mark.parametrize("file_encoding", ["f16", "bf16"])
def test_half_float_gguf_matches_its_own_weights(small, file_encoding):
    """F16/BF16 matrices stream half-width through the panel kernels and are
    widened exactly in registers: float32 math on the file's own weights,
    so held to the float32 bar (teacher-forced, as rounding the weights
    moves the greedy path away from the float32 checkpoint's)."""
    root, checkpoint, prompts = small
    path = write_gguf(checkpoint, root / f"small-{file_encoding}.gguf", file_encoding)
    # As `./run serve FILE.gguf` does: config and tokenizer from the file's
    # metadata, and a weight path MAX 26.7 does not misread ("bf16").
    bare = unpack(path, root / f"bare-{file_encoding}")
    half = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_qkv.weight"] == half[file_encoding]
    reference = dequantized_checkpoint(path, checkpoint, root / f"ref-{file_encoding}")
    oracle = transformers_greedy_decode(reference, prompts, STEPS)
    assert bare.encoding == "float32"
    ours = max_greedy_decode(
        bare.model_dir,
        prompts,
        STEPS,
        encoding="float32",
        weight_path=bare.weight_path,
        forced=oracle.tokens,
    )
    report = compare(ours, oracle, prompts)
    for prompt in report.prompts:
        assert prompt.first_divergence is None, prompt
        assert prompt.max_rel_error <= TOLERANCE, prompt.max_rel_error


@pytest.mark.parametrize("file_encoding", ["q4_k", "q6_k"])
def test_k_quants_on_max_qmatmul_match_their_dequantized_weights(
    small, monkeypatch, file_encoding
):
    """`GPT2_MAX_GGML_KERNELS=max` (the benchmark's kernel ablation): the
    same files on MAX's `ops.qmatmul`, rows padded to its tile, held to the
    same bar as this package's kernels (measured: 1.34e-2 for q4_k and
    1.28e-2 for q6_k, against 0.93e-2 and 0.91e-2 on the panel kernels:
    the switch reaches the loaded model)."""
    from gpt2_lmhead_model.routing import GGML_KERNELS_SWITCH

    monkeypatch.setenv(GGML_KERNELS_SWITCH, "max")
    root, checkpoint, _ = small
    path = write_gguf(checkpoint, root / f"small-{file_encoding}.gguf", file_encoding)
    check_against_dequantized(small, path, file_encoding)
