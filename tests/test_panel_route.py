"""Which runs take the panel kernels: float32 on CPU, nothing else."""

from __future__ import annotations

import pytest
from max.graph import DeviceRef

from gpt2_lmhead_model.model_config import uses_panel_kernels

CPU = [DeviceRef.CPU()]
GPU = [DeviceRef.GPU()]


@pytest.mark.parametrize(
    ("devices", "encoding", "expected"),
    [
        (CPU, "float32", True),
        (CPU, "bfloat16", False),
        (CPU, "q4_k", False),
        (CPU, "q6_k", False),
        (GPU, "float32", False),
        (GPU, "bfloat16", False),
    ],
)
def test_panel_kernels_only_for_cpu_float32(devices, encoding, expected):
    assert uses_panel_kernels(devices, encoding) is expected
