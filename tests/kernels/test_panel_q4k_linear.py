"""The `panel_q4k_linear` kernel against NumPy on ggml Q4_K matrices.

The kernel rounds activations to int8 per 32 values (as llama.cpp and
MAX's ggml kernels do), so it is held tightly to NumPy doing that same
rounding, and loosely to float math on the dequantized matrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType

from gpt2_lmhead_model.kernels import KERNELS_DIR
from gpt2_lmhead_model.kernels.panel_q4k_linear import panel_q4k_linear
from gpt2_lmhead_model.kernels.panels import (
    ACT_NONE,
    FUSED_ACTIVATIONS,
    PANEL,
    Q4K_SUB,
    Q4K_SUPER,
    pack_q4k_panels,
)
from gpt2_max.gguf_quants import quantize

from .operands import Q4_K, emulated, q4k_operands, reference

ACTS = {"none": ACT_NONE, "gelu_new": FUSED_ACTIVATIONS["gelu_new"]}


@pytest.fixture(scope="module")
def run():
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(DType.uint32, ["panels", "words", PANEL], cpu),
        TensorType(DType.uint8, ["panels", "subs", 2, PANEL], cpu),
        TensorType(DType.float32, ["panels", "supers", 2, PANEL], cpu),
        TensorType(DType.float32, ["n"], cpu),
    ]
    with Graph("q4k_test", input_types=types, custom_extensions=[KERNELS_DIR]) as g:
        x, c, s, d, b = (v.tensor for v in g.inputs)
        g.output(*(panel_q4k_linear(x, c, s, d, b, code) for code in ACTS.values()))
    model = InferenceSession(devices=[CPU()]).load(g)

    def execute(x: np.ndarray, blocks: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        outs = model.execute(
            *(Buffer.from_numpy(a) for a in (x, *pack_q4k_panels(blocks), b))
        )
        return [o.to_numpy() for o in outs]

    return execute


def unpack(codes, sub, sup, k: int):
    """The panels back to per-weight codes, `d*sc` and `dmin*m`, each
    `[P, K, PANEL]` (the layout `pack_q4k_panels` documents)."""
    panels = codes.shape[0]
    nibbles = codes.view(np.uint8).reshape(panels, k // 8, PANEL, 4)
    q = np.stack([nibbles & 15, nibbles >> 4], axis=2)  # [P, K/8, 2, PANEL, 4]
    q = q.transpose(0, 1, 2, 4, 3).reshape(panels, k, PANEL).astype(np.float32)
    per_sub = Q4K_SUPER // Q4K_SUB
    scale = np.repeat(sup[:, :, 0], per_sub, axis=1) * sub[:, :, 0]
    minimum = np.repeat(sup[:, :, 1], per_sub, axis=1) * sub[:, :, 1]
    return q, np.repeat(scale, Q4K_SUB, axis=1), np.repeat(minimum, Q4K_SUB, axis=1)


SHAPES = [(256, 1), (512, 77), (768, 2304)]
CASES = [(m, k, n) for m in (1, 3, 9, 32) for k, n in SHAPES]
CASES += [(1, 768, 50257), (3, 1536, 50257)]  # GPT-2 heads (small, large)


@pytest.mark.parametrize(("m", "k", "n"), CASES)
def test_matches_numpy(run, m, k, n):
    x, blocks, w, b = q4k_operands(m, k, n, seed=m * 1000 + n)
    for y, act in zip(run(x, blocks, b), ACTS, strict=True):
        assert y.shape == (m, n)
        np.testing.assert_allclose(
            y, emulated(x, blocks, b, act), rtol=1e-5, atol=1e-5, err_msg=act
        )
    if m * n < 64:
        return
    # Against float math: int8 activations move x @ W by ~0.6 % (rms).
    z = run(x, blocks, np.zeros_like(b))[0]
    exact = reference(x, w, 0, "none")
    assert np.linalg.norm(z - exact) <= 0.03 * np.linalg.norm(exact)


def test_large_prefill(run):
    x, blocks, _, b = q4k_operands(300, 256, 45, seed=7)
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(y, emulated(x, blocks, b, "none"), rtol=1e-5, atol=1e-5)


def test_zero_rows_and_blocks(run):
    """An all-zero block of x has no scale to divide by: it contributes 0."""
    x, blocks, _, b = q4k_operands(3, 512, 40, seed=9)
    x[0] = 0
    x[1, :Q4K_SUB] = 0
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(y[0], b, rtol=0, atol=0)
    np.testing.assert_allclose(y, emulated(x, blocks, b, "none"), rtol=1e-5, atol=1e-5)


def test_repacking_keeps_every_weight_exact():
    """Codes, multipliers and super-block scales stay aligned with their
    columns and K positions: rebuilding the weights from the panels gives
    ggml's dequantized matrix bit for bit, and zeros past N."""
    n, k = 45, 2 * Q4K_SUPER
    rng = np.random.default_rng(3)
    w = rng.standard_normal((n, k)).astype(np.float32) * np.linspace(0.1, 3, n)[:, None]
    blocks = quantize(w, Q4_K)
    dequantized = gguf.quants.dequantize(blocks, Q4_K).reshape(n, k)
    codes, sub, sup = pack_q4k_panels(blocks)
    assert codes.shape == (2, k // 8, PANEL) and codes.dtype == np.uint32
    assert sub.shape == (2, k // Q4K_SUB, 2, PANEL)
    assert sup.shape == (2, k // Q4K_SUPER, 2, PANEL)
    q, scale, minimum = unpack(codes, sub, sup, k)
    rebuilt = (scale * q - minimum).transpose(0, 2, 1).reshape(-1, k)
    np.testing.assert_array_equal(rebuilt[:n], dequantized)
    assert not rebuilt[n:].any()
