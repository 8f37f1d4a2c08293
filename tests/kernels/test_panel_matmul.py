"""The `panel_matmul` kernel (the LM head) against NumPy: y = x @ W."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_lmhead_model.kernels.panel_matmul import panel_matmul

from .operands import compile_kernel_graph, operands

VOCAB = 50257  # GPT-2's vocabulary: not a multiple of any vector width


@pytest.fixture(scope="module")
def run():
    return compile_kernel_graph(
        "panel_matmul_test",
        lambda x, w: [panel_matmul(x, w, VOCAB)],
        with_bias=False,
    )


@pytest.mark.parametrize("m", [1, 3, 32])
def test_head_matches_numpy(run, m):
    x, w, _ = operands(m, 64, VOCAB, seed=m)
    (y,) = run(x, w)
    assert y.shape == (m, VOCAB)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


def test_wrong_packing_is_refused():
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, [1, 8], cpu),
        TensorType(DType.float32, [2, 8, 32], cpu),
    ]
    with Graph("bad", input_types=types), pytest.raises(ValueError, match="packed"):
        panel_matmul(*(v.tensor for v in Graph.current.inputs), VOCAB)
