"""The `panel_linear` kernel against NumPy: y = act(x @ W + b)."""

from __future__ import annotations

import numpy as np
import pytest
from max.dtype import DType

from gpt2_lmhead_model.kernels.panel_linear import panel_linear
from gpt2_lmhead_model.kernels.panels import ACT_NONE, FUSED_ACTIVATIONS

from .operands import compile_kernel_graph, operands, reference, widened

ACTS = {"none": ACT_NONE, "gelu": FUSED_ACTIVATIONS["gelu"]}
ACTS["gelu_new"] = FUSED_ACTIVATIONS["gelu_new"]


@pytest.fixture(scope="module")
def run():
    return compile_kernel_graph(
        "panel_linear_test",
        lambda x, w, b: [panel_linear(x, w, b, code) for code in ACTS.values()],
        with_bias=True,
    )


@pytest.mark.parametrize("m", [1, 3, 9, 32])
@pytest.mark.parametrize(("k", "n"), [(1, 1), (37, 77), (768, 2304), (3072, 768)])
def test_matches_numpy(run, m, k, n):
    x, w, b = operands(m, k, n, seed=m * 1000 + n)
    for y, act in zip(run(x, w, b), ACTS, strict=True):
        assert y.shape == (m, n)
        np.testing.assert_allclose(
            y, reference(x, w, b, act), rtol=1e-5, atol=1e-5, err_msg=act
        )


def test_large_prefill(run):
    x, w, b = operands(300, 40, 45, seed=7)
    y = run(x, w, b)[0]
    np.testing.assert_allclose(y, reference(x, w, b, "none"), rtol=1e-5, atol=1e-5)


def test_every_column_is_its_own(run):
    """Each output column comes from its own weight column (no panel mixup)."""
    k, n = 5, 70
    w = np.zeros((k, n), dtype=np.float32)
    w[np.arange(n) % k, np.arange(n)] = np.arange(1, n + 1, dtype=np.float32)
    x = np.eye(k, dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    y = run(x, w, b)[0]
    np.testing.assert_array_equal(y, w)


@pytest.fixture(scope="module", params=[DType.bfloat16, DType.float16], ids=str)
def run_half(request):
    return request.param, compile_kernel_graph(
        f"panel_linear_{request.param}_test",
        lambda x, w, b: [panel_linear(x, w, b, ACTS["gelu_new"])],
        with_bias=True,
        weight_dtype=request.param,
    )


@pytest.mark.parametrize("m", [1, 3, 32])
@pytest.mark.parametrize(("k", "n"), [(37, 77), (768, 2304), (768, 50257)])
def test_half_weights_are_widened_exactly(run_half, m, k, n):
    """Half-width panels (a GGUF file's F16/BF16 matrices): float32 math on
    the half weights' exact values, to float32's rounding."""
    dtype, run = run_half
    x, w, b = operands(m, k, n, seed=m * 1000 + n)
    y = run(x, w, b)[0]
    want = reference(x, widened(w, dtype), b, "gelu_new")
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # The rounding is visible: exact on the float32 weights would miss.
    assert np.abs(reference(x, w, b, "gelu_new") - want).max() > 1e-4
