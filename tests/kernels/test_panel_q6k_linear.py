"""The `panel_q6k_linear` kernel against NumPy on ggml Q6_K matrices.

As for Q4_K, activations are rounded to int8 per 32 values, so the kernel
is held tightly to NumPy doing that same rounding, and loosely to float
math on the dequantized matrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType

from gpt2_lmhead_model.kernels import KERNELS_DIR
from gpt2_lmhead_model.kernels.panel_q6k_linear import panel_q6k_linear
from gpt2_lmhead_model.kernels.panels import (
    PANEL,
    Q6K_GROUP,
    Q6K_OFFSET,
    Q6K_SUPER,
    pack_q6k_panels,
)
from gpt2_max.gguf_quants import quantize

from .operands import emulated, q4k_operands, reference
from .test_panel_q4k_linear import ACTS, CASES

Q6_K = gguf.GGMLQuantizationType.Q6_K


@pytest.fixture(scope="module")
def run():
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(DType.uint32, ["panels", "words", PANEL], cpu),
        TensorType(DType.uint32, ["panels", "groups", PANEL], cpu),
        TensorType(DType.int8, ["panels", "groups", PANEL], cpu),
        TensorType(DType.float32, ["panels", "supers", PANEL], cpu),
        TensorType(DType.float32, ["n"], cpu),
    ]
    with Graph("q6k_test", input_types=types, custom_extensions=[KERNELS_DIR]) as g:
        x, lo, hi, sc, d, b = (v.tensor for v in g.inputs)
        g.output(
            *(panel_q6k_linear(x, lo, hi, sc, d, b, code) for code in ACTS.values())
        )
    model = InferenceSession(devices=[CPU()]).load(g)

    def execute(x: np.ndarray, blocks: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        outs = model.execute(
            *(Buffer.from_numpy(a) for a in (x, *pack_q6k_panels(blocks), b))
        )
        return [o.to_numpy() for o in outs]

    return execute


def q6k_operands(m: int, k: int, n: int, seed: int):
    return q4k_operands(m, k, n, seed, Q6_K)


@pytest.mark.parametrize(("m", "k", "n"), CASES)
def test_matches_numpy(run, m, k, n):
    x, blocks, w, b = q6k_operands(m, k, n, seed=m * 1000 + n)
    for y, act in zip(run(x, blocks, b), ACTS, strict=True):
        assert y.shape == (m, n)
        np.testing.assert_allclose(
            y, emulated(x, blocks, b, act, Q6_K), rtol=1e-5, atol=1e-5, err_msg=act
        )
    if m * n < 64:
        return
    # Against float math: int8 activations move x @ W by ~0.6 % (rms).
    z = run(x, blocks, np.zeros_like(b))[0]
    exact = reference(x, w, 0, "none")
    assert np.linalg.norm(z - exact) <= 0.03 * np.linalg.norm(exact)


def test_large_prefill(run):
    x, blocks, _, b = q6k_operands(300, 256, 45, seed=7)
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(
        y, emulated(x, blocks, b, "none", Q6_K), rtol=1e-5, atol=1e-5
    )


def test_zero_rows_and_blocks(run):
    """An all-zero block of x has no scale to divide by: it contributes 0."""
    x, blocks, _, b = q6k_operands(3, 512, 40, seed=9)
    x[0] = 0
    x[1, :32] = 0
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(y[0], b, rtol=0, atol=0)
    np.testing.assert_allclose(
        y, emulated(x, blocks, b, "none", Q6_K), rtol=1e-5, atol=1e-5
    )


def test_repacking_keeps_every_weight_exact():
    """Low nibbles, high bit pairs, multipliers and scales stay aligned with
    their columns and K positions: rebuilding the weights from the panels
    gives ggml's dequantized matrix bit for bit, and zeros past N."""
    n, k = 45, 2 * Q6K_SUPER
    rng = np.random.default_rng(3)
    w = rng.standard_normal((n, k)).astype(np.float32) * np.linspace(0.1, 3, n)[:, None]
    blocks = quantize(w, Q6_K)
    dequantized = gguf.quants.dequantize(blocks, Q6_K).reshape(n, k)
    low, high, sc, d = pack_q6k_panels(blocks)
    assert low.shape == (2, k // 8, PANEL) and low.dtype == np.uint32
    assert high.shape == (2, k // Q6K_GROUP, PANEL) and high.dtype == np.uint32
    assert sc.shape == (2, k // Q6K_GROUP, PANEL) and sc.dtype == np.int8
    assert d.shape == (2, k // Q6K_SUPER, PANEL) and d.dtype == np.float32
    panels = low.shape[0]
    nibbles = low.view(np.uint8).reshape(panels, k // 8, PANEL, 4)
    lo = np.stack([nibbles & 15, nibbles >> 4], axis=2)  # [P, K/8, 2, PANEL, 4]
    lo = lo.transpose(0, 1, 2, 4, 3).reshape(panels, k, PANEL)
    pairs = high.view(np.uint8).reshape(panels, k // Q6K_GROUP, PANEL, 4)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1, 1)
    hi = (pairs[:, :, None] >> shifts) & 3  # [P, K/16, j, PANEL, b]
    hi = hi.transpose(0, 1, 2, 4, 3).reshape(panels, k, PANEL)
    q = (lo | (hi << 4)).astype(np.float32) - Q6K_OFFSET
    scale = np.repeat(d, Q6K_SUPER, axis=1) * np.repeat(
        sc.astype(np.float32), Q6K_GROUP, axis=1
    )
    rebuilt = (scale * q).transpose(0, 2, 1).reshape(-1, k)
    np.testing.assert_array_equal(rebuilt[:n], dequantized)
    assert not rebuilt[n:].any()
