"""The formats' load-time side: what a stored tensor becomes, exactly."""

from __future__ import annotations

import numpy as np
import torch
from max.dtype import DType
from max.graph import DeviceRef

from gpt2_lmhead_model.formats import Dense, FloatPanels, StoredTensor, raw_array
from gpt2_lmhead_model.kernels.panels import pack_panels
from gpt2_lmhead_model.routing import choose_format


def _bf16_words(values: np.ndarray) -> np.ndarray:
    as_bf16 = torch.from_numpy(values).to(torch.bfloat16)
    return as_bf16.view(torch.int16).numpy().view(np.uint16)


def test_bfloat16_widens_exactly_as_torch_does():
    rng = np.random.default_rng(0)
    words = _bf16_words(rng.standard_normal((5, 7), dtype=np.float32))
    stored = StoredTensor("m.weight", words, DType.bfloat16, words.shape)
    want = torch.from_numpy(words.view(np.int16)).view(torch.bfloat16).float()
    np.testing.assert_array_equal(stored.float32(), want.numpy())


def test_a_half_float_checkpoint_runs_half_width_on_cpu():
    """A float16 or bfloat16 checkpoint on a float32 CPU graph keeps its
    width in the panels (the kernel widens exactly), not a float32 copy."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 9), dtype=np.float32)  # [out, in]
    cpu = DeviceRef.CPU()
    for dtype, array in (
        (DType.float16, w.astype(np.float16)),
        (DType.bfloat16, _bf16_words(w)),
    ):
        stored = StoredTensor("h.0.mlp.c_fc.weight", array, dtype, array.shape)
        fmt = choose_format(dtype, None, cpu, DType.float32)
        assert fmt == FloatPanels(dtype)
        (packed,) = fmt.pack(stored).values()
        assert packed.dtype == dtype
        expected = pack_panels(array.T)
        np.testing.assert_array_equal(raw_array(packed).view(expected.dtype), expected)


def test_dense_keeps_a_file_dtype_it_shares_and_converts_others():
    rng = np.random.default_rng(2)
    words = _bf16_words(rng.standard_normal((6, 4), dtype=np.float32))
    stored = StoredTensor("lm_head.weight", words, DType.bfloat16, words.shape)
    (same,) = Dense(DType.bfloat16).pack(stored).values()
    np.testing.assert_array_equal(raw_array(same), words)  # no rounding trip
    (head,) = Dense(DType.float32, in_out=True).pack(stored).values()
    np.testing.assert_array_equal(np.from_dlpack(head.data), stored.float32().T)
