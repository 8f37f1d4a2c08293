"""The `panel_q8_linear` kernel against NumPy on ggml Q8_0 matrices.

As for Q4_K, the kernel rounds activations to int8 per 32 values (as
llama.cpp's Q8_0 dot product does), so it is held tightly to NumPy doing
that same rounding, and loosely to float math on the dequantized matrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType

from gpt2_lmhead_model.kernels import KERNELS_DIR
from gpt2_lmhead_model.kernels.panel_q8_linear import panel_q8_linear
from gpt2_lmhead_model.kernels.panels import (
    ACT_NONE,
    FUSED_ACTIVATIONS,
    PANEL,
    Q8_BLOCK,
    Q8_CODES_PER_WORD,
    pack_q8_panels,
)

from .operands import emulated, q8_codes, reference

ACTS = {"none": ACT_NONE, "gelu_new": FUSED_ACTIVATIONS["gelu_new"]}
Q8_0 = gguf.GGMLQuantizationType.Q8_0


@pytest.fixture(scope="module")
def run():
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(DType.uint32, ["panels", "words", PANEL], cpu),
        TensorType(DType.float32, ["panels", "blocks", PANEL], cpu),
        TensorType(DType.float32, ["n"], cpu),
    ]
    with Graph("q8_test", input_types=types, custom_extensions=[KERNELS_DIR]) as g:
        x, q, s, b = (v.tensor for v in g.inputs)
        g.output(*(panel_q8_linear(x, q, s, b, code) for code in ACTS.values()))
    model = InferenceSession(devices=[CPU()]).load(g)

    def execute(x: np.ndarray, blocks: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        q, s = pack_q8_panels(blocks)
        outs = model.execute(*(Buffer.from_numpy(a) for a in (x, q, s, b)))
        return [o.to_numpy() for o in outs]

    return execute


def q8_operands(m: int, k: int, n: int, seed: int):
    """x, the ggml Q8_0 blocks of a `[n, k]` matrix, its dequantized
    `[k, n]` transpose, and a bias."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    blocks = gguf.quants.quantize(w, Q8_0)
    dequantized = gguf.quants.dequantize(blocks, Q8_0)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, blocks, dequantized.reshape(n, k).T, b


SHAPES = [(32, 1), (64, 77), (1600, 4800)]
CASES = [(m, k, n) for m in (1, 3, 9, 32) for k, n in SHAPES]
CASES += [(1, 1600, 50257), (3, 768, 50257)]  # GPT-2 heads


@pytest.mark.parametrize(("m", "k", "n"), CASES)
def test_matches_numpy(run, m, k, n):
    x, blocks, w, b = q8_operands(m, k, n, seed=m * 1000 + n)
    for y, act in zip(run(x, blocks, b), ACTS, strict=True):
        assert y.shape == (m, n)
        np.testing.assert_allclose(
            y, emulated(x, blocks, b, act, Q8_0), rtol=1e-5, atol=1e-5, err_msg=act
        )
    if m * n < 64:
        return
    # Against float math: int8 activations move x @ W by well under 1 % (rms).
    z = run(x, blocks, np.zeros_like(b))[0]
    exact = reference(x, w, 0, "none")
    assert np.linalg.norm(z - exact) <= 0.01 * np.linalg.norm(exact)


def test_large_prefill(run):
    x, blocks, _, b = q8_operands(300, 96, 45, seed=7)
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(
        y, emulated(x, blocks, b, "none", Q8_0), rtol=1e-5, atol=1e-5
    )


def test_extreme_codes_and_zero_blocks(run):
    """Codes -128 and 127 (offset 0 and 255: the unsigned byte's whole
    range) against full-scale activations of both signs, and an all-zero
    block of x (no scale to divide by: it contributes 0)."""
    m, k, n = 3, 4 * Q8_BLOCK, 40
    rng = np.random.default_rng(11)
    codes = rng.choice(np.array([-128, 127, -1, 0], np.int8), size=(n, k))
    scales = rng.uniform(0.5, 2, size=(n, k // Q8_BLOCK)).astype(np.float16)
    blocks = np.concatenate(
        [
            scales.view(np.uint8).reshape(n, -1, 2),
            codes.view(np.uint8).reshape(n, -1, 32),
        ],
        axis=2,
    ).reshape(n, -1)
    x = np.where(rng.random((m, k)) < 0.5, -1.0, 1.0).astype(np.float32) * 3
    x[1, :Q8_BLOCK] = 0
    x[2] = 0
    b = rng.standard_normal(n, dtype=np.float32)
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(y[2], b, rtol=0, atol=0)
    np.testing.assert_allclose(
        y, emulated(x, blocks, b, "none", Q8_0), rtol=1e-5, atol=1e-4
    )


def test_repacking_keeps_every_weight_exact():
    """Codes and per-block scales stay aligned with their columns and K
    positions: rebuilding the weights from the panels gives ggml's
    dequantized matrix bit for bit, and zeros past N."""
    n, k = 40, 3 * Q8_BLOCK
    rng = np.random.default_rng(3)
    w = rng.standard_normal((n, k)).astype(np.float32) * np.linspace(0.1, 3, n)[:, None]
    blocks = gguf.quants.quantize(w, Q8_0)
    dequantized = gguf.quants.dequantize(blocks, Q8_0).reshape(n, k)
    codes, scales = pack_q8_panels(blocks)
    assert codes.shape == (2, k // Q8_CODES_PER_WORD, PANEL)
    assert codes.dtype == np.uint32 and scales.shape == (2, k // Q8_BLOCK, PANEL)
    q = q8_codes(codes, k)
    rebuilt = (q * np.repeat(scales, Q8_BLOCK, axis=1)).transpose(0, 2, 1)
    np.testing.assert_array_equal(rebuilt.reshape(-1, k)[:n], dequantized)
    assert not rebuilt.reshape(-1, k)[n:].any()
