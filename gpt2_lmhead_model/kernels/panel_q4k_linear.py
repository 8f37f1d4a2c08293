"""Graph wrapper of the `panel_q4k_linear` op: y = act(x @ W + b) on CPU,
W a ggml Q4_K matrix repacked by `pack_q4k_panels`."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .panels import PANEL


def panel_q4k_linear(
    x: TensorValue,
    codes: TensorValue,
    sub_scales: TensorValue,
    super_scales: TensorValue,
    bias: TensorValue,
    activation: int,
) -> TensorValue:
    """`x [M, K]` float32; `codes`, `sub_scales` and `super_scales` from
    `pack_q4k_panels`; `bias [N]`; `activation` an `ACT_*` code of `panels`."""
    if codes.shape[2] != PANEL or codes.dtype != DType.uint32:
        raise ValueError(f"panel_q4k_linear: weight {codes.shape} is not packed")
    return ops.custom(
        name="panel_q4k_linear",
        device=x.device,
        values=[x, codes, sub_scales, super_scales, bias],
        out_types=[TensorType(DType.float32, [x.shape[0], bias.shape[0]], x.device)],
        parameters={"activation": activation},
    )[0].tensor
