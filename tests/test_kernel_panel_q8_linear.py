"""The `panel_q8_linear` kernel against NumPy on ggml Q8_0 matrices."""

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
    pack_q8_panels,
)

from .test_kernel_panel_linear import reference

ACTS = {"none": ACT_NONE, "gelu_new": FUSED_ACTIVATIONS["gelu_new"]}


@pytest.fixture(scope="module")
def run():
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(DType.int8, ["panels", "k", PANEL], cpu),
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
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    dequantized = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, blocks, dequantized.reshape(n, k).T, b


SHAPES = [(32, 1), (64, 77), (1600, 4800)]
CASES = [(m, k, n) for m in (1, 3, 9, 32) for k, n in SHAPES]
CASES += [(1, 1600, 50257), (3, 768, 50257)]  # GPT-2 heads


@pytest.mark.parametrize(("m", "k", "n"), CASES)
def test_matches_numpy_on_the_dequantized_matrix(run, m, k, n):
    x, blocks, w, b = q8_operands(m, k, n, seed=m * 1000 + n)
    for y, act in zip(run(x, blocks, b), ACTS, strict=True):
        assert y.shape == (m, n)
        np.testing.assert_allclose(
            y, reference(x, w, b, act), rtol=1e-5, atol=1e-5, err_msg=act
        )


def test_large_prefill(run):
    x, blocks, w, b = q8_operands(300, 96, 45, seed=7)
    y = run(x, blocks, b)[0]
    np.testing.assert_allclose(y, reference(x, w, b, "none"), rtol=1e-5, atol=1e-5)


def test_each_block_scale_lands_on_its_own_values():
    """Panels, K positions and per-block scales stay aligned (no mixup)."""
    n, k = 40, 3 * Q8_BLOCK
    w = np.zeros((n, k), dtype=np.float32)
    w[np.arange(n), np.arange(n) % k] = np.arange(1, n + 1, dtype=np.float32)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0).reshape(n, k)
    q, s = pack_q8_panels(blocks)
    assert q.shape == (2, k, PANEL) and s.shape == (2, 3, PANEL)
    widened = (q.astype(np.float32) * np.repeat(s, Q8_BLOCK, axis=1)).transpose(0, 2, 1)
    np.testing.assert_array_equal(widened.reshape(-1, k)[:n], w)
    assert not widened.reshape(-1, k)[n:].any()  # padding is zero
