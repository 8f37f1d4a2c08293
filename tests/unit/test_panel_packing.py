"""Packing for the panel kernels: every weight lands where the kernel reads it."""

from __future__ import annotations

import numpy as np
import pytest
from max.dtype import DType

from gpt2_lmhead_model.formats import FloatPanels, StoredTensor
from gpt2_lmhead_model.kernels.panels import PANEL, pack_panels
from gpt2_lmhead_model.routing import WeightPlan


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    panels, k, width = packed.shape
    return packed.transpose(1, 0, 2).reshape(k, panels * width)[:, :n]


@pytest.mark.parametrize(("k", "n"), [(1, 1), (5, PANEL), (7, PANEL + 1), (3, 77)])
def test_pack_panels_layout(k, n):
    w = np.arange(k * n, dtype=np.float32).reshape(k, n) + 1
    packed = pack_panels(w)
    assert packed.shape == (-(-n // PANEL), k, PANEL)
    assert packed.flags.c_contiguous
    np.testing.assert_array_equal(unpack(packed, n), w)
    assert not packed.transpose(1, 0, 2).reshape(k, -1)[:, n:].any()  # zero pad
    # Panel p, row r, lane j is column p * PANEL + j of row r.
    p, j = divmod(n - 1, PANEL)
    assert packed[p, k - 1, j] == w[k - 1, n - 1]


def test_float32_on_cpu_packs_matrices_and_head_only():
    rng = np.random.default_rng(0)
    block = rng.standard_normal((40, 9), dtype=np.float32)  # Linear [out, in]
    head = rng.standard_normal((70, 9), dtype=np.float32)  # [vocab, n_embd]
    bias = rng.standard_normal(40, dtype=np.float32)
    wte = rng.standard_normal((70, 9), dtype=np.float32)
    stored = {
        name: StoredTensor(name, array, DType.float32, array.shape)
        for name, array in (
            ("h.0.mlp.c_fc.weight", block),
            ("h.0.mlp.c_fc.bias", bias),
            ("lm_head.weight", head),
            ("wte.weight", wte),
        )
    }
    plan = WeightPlan(
        {"h.0.mlp.c_fc": FloatPanels(), "lm_head": FloatPanels()},
        DType.float32,
        tied=False,
    )
    out = plan.pack(stored)
    fc = np.from_dlpack(out["h.0.mlp.c_fc.weight"].data)
    np.testing.assert_array_equal(unpack(fc, 40), block.T)
    np.testing.assert_array_equal(
        unpack(np.from_dlpack(out["lm_head.weight"].data), 70), head.T
    )
    for name in ("h.0.mlp.c_fc.bias", "wte.weight"):
        np.testing.assert_array_equal(
            np.from_dlpack(out[name].data), stored[name].array
        )
