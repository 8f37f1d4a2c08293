"""Which format runs a matrix: decided in `routing` alone, from the device,
the graph's dtype and how the file stores the matrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from max.dtype import DType
from max.graph import DeviceRef
from max.graph.quantization import QuantizationEncoding

from gpt2_lmhead_model.formats import (
    Dense,
    FloatPanels,
    MaxGGML,
    Q4KPanels,
    Q6KPanels,
    Q8Panels,
    StoredTensor,
)
from gpt2_lmhead_model.routing import (
    GGML_KERNELS_SWITCH,
    HEAD,
    choose_format,
    matrix_names,
    route_weights,
)

CPU, GPU = DeviceRef.CPU(), DeviceRef.GPU()
Q = gguf.GGMLQuantizationType
F32, BF16, F16 = DType.float32, DType.bfloat16, DType.float16


@pytest.mark.parametrize(
    ("stored", "ggml", "device", "dtype", "head", "expected"),
    [
        # float files
        (F32, None, CPU, F32, False, FloatPanels(F32)),
        (F32, None, CPU, F32, True, FloatPanels(F32)),
        (F16, None, CPU, F32, False, FloatPanels(F16)),
        (BF16, None, CPU, F32, True, FloatPanels(BF16)),
        (F32, None, CPU, BF16, False, Dense(BF16)),
        (F32, None, CPU, BF16, True, Dense(BF16, in_out=True)),
        (F32, None, GPU, F32, False, Dense(F32)),
        (F32, None, GPU, BF16, True, Dense(BF16)),
        # ggml blocks on CPU: this package's kernels, MAX's for Q4_0, the
        # rest dequantized onto the float32 panels
        (DType.uint8, Q.Q8_0, CPU, F32, False, Q8Panels()),
        (DType.uint8, Q.Q4_K, CPU, F32, False, Q4KPanels()),
        (DType.uint8, Q.Q6_K, CPU, F32, True, Q6KPanels()),
        (DType.uint8, Q.Q4_0, CPU, F32, False, MaxGGML(QuantizationEncoding.Q4_0)),
        (DType.uint8, Q.Q5_K, CPU, F32, False, FloatPanels(F32)),
        # off the CPU, where MAX's ggml kernels do not run: dequantized
        (DType.uint8, Q.Q4_K, GPU, BF16, False, Dense(BF16)),
        (DType.uint8, Q.Q8_0, GPU, F32, True, Dense(F32)),
    ],
)
def test_choose_format(monkeypatch, stored, ggml, device, dtype, head, expected):
    monkeypatch.delenv(GGML_KERNELS_SWITCH, raising=False)
    assert choose_format(stored, ggml, device, dtype, head) == expected


@pytest.mark.parametrize(
    ("switch", "ggml", "device", "expected"),
    [
        ("ours", Q.Q4_K, CPU, Q4KPanels()),
        ("max", Q.Q4_K, CPU, MaxGGML(QuantizationEncoding.Q4_K)),
        ("max", Q.Q6_K, CPU, MaxGGML(QuantizationEncoding.Q6_K)),
        # only the K-quants switch: Q8_0 has no MAX kernel, Q4_0 no panel one
        ("max", Q.Q8_0, CPU, Q8Panels()),
        ("max", Q.Q4_0, CPU, MaxGGML(QuantizationEncoding.Q4_0)),
        # off the CPU MAX's ggml kernels do not run: dequantized either way
        ("max", Q.Q4_K, GPU, Dense(F32)),
    ],
)
def test_ggml_kernels_switch_puts_max_qmatmul_under_the_k_quants(
    monkeypatch, switch, ggml, device, expected
):
    monkeypatch.setenv(GGML_KERNELS_SWITCH, switch)
    assert choose_format(DType.uint8, ggml, device, F32) == expected


def test_ggml_kernels_switch_refuses_an_unknown_value(monkeypatch):
    monkeypatch.setenv(GGML_KERNELS_SWITCH, "MAX")
    with pytest.raises(ValueError, match="GPT2_MAX_GGML_KERNELS='MAX'"):
        choose_format(DType.uint8, Q.Q4_K, CPU, F32)


def _stored(name, shape, ggml=None):
    return StoredTensor(name, np.zeros(shape, np.float32), F32, shape, ggml)


def test_plan_has_one_format_per_matrix_and_ties_the_head_to_wte():
    stored = {f"{m}.weight": _stored(f"{m}.weight", (8, 8)) for m in matrix_names(2)}
    stored.pop(f"{HEAD}.weight")
    stored["wte.weight"] = _stored("wte.weight", (8, 8), Q.Q4_K)
    plan = route_weights(stored, 2, CPU, F32)
    assert set(plan.formats) == set(matrix_names(2))
    assert plan.tied and plan[HEAD] == Q4KPanels()  # routed as wte is stored
    assert not plan.head_shares_wte  # a packed copy
    gpu = route_weights(stored, 2, GPU, BF16)
    assert gpu.tied and gpu.head_shares_wte and gpu[HEAD] == Dense(BF16)
    stored[f"{HEAD}.weight"] = _stored(f"{HEAD}.weight", (8, 8))
    assert not route_weights(stored, 2, GPU, BF16).tied


@pytest.mark.parametrize(
    ("device", "dtype", "switch", "fused"),
    [
        (GPU, BF16, None, True),  # MAX's fused QKV-and-cache kernel
        (GPU, BF16, "0", False),  # the split fallback (GPT2_MAX_FUSED_QKV=0)
        (CPU, F32, None, False),  # the panel kernels have no fused cache store
        (CPU, BF16, None, True),
    ],
)
def test_fused_qkv_only_for_a_plain_c_attn_and_behind_one_switch(
    monkeypatch, device, dtype, switch, fused
):
    from gpt2_lmhead_model.gpt2 import GPT2Attention
    from gpt2_lmhead_model.model_config import FUSED_QKV_SWITCH, GPT2Config

    from .test_model_config import config

    if switch is None:
        monkeypatch.delenv(FUSED_QKV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(FUSED_QKV_SWITCH, switch)
    cfg = config(n_embd=64, n_head=4, n_layer=1, vocab_size=32)
    stored = {
        f"{m}.weight": _stored(f"{m}.weight", (8, 8)) for m in matrix_names(1)
    } | {"wte.weight": _stored("wte.weight", (8, 8))}
    cfg.devices = [device]
    cfg.dtype = dtype
    cfg.fused_qkv = GPT2Config.fused_qkv_requested()
    cfg.weights = route_weights(stored, 1, device, dtype)
    assert GPT2Attention(cfg, 0).fused_qkv is fused
