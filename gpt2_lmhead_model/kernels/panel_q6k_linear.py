"""Graph wrapper of the `panel_q6k_linear` op: y = act(x @ W + b) on CPU,
W a ggml Q6_K matrix repacked by `pack_q6k_panels`."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .panels import PANEL


def panel_q6k_linear(
    x: TensorValue,
    low: TensorValue,
    high: TensorValue,
    multipliers: TensorValue,
    scales: TensorValue,
    bias: TensorValue,
    activation: int,
) -> TensorValue:
    """`x [M, K]` float32; `low`, `high`, `multipliers` and `scales` from
    `pack_q6k_panels`; `bias [N]`; `activation` an `ACT_*` code of `panels`."""
    if low.shape[2] != PANEL or low.dtype != DType.uint32:
        raise ValueError(f"panel_q6k_linear: weight {low.shape} is not packed")
    return ops.custom(
        name="panel_q6k_linear",
        device=x.device,
        values=[x, low, high, multipliers, scales, bias],
        out_types=[TensorType(DType.float32, [x.shape[0], bias.shape[0]], x.device)],
        parameters={"activation": activation},
    )[0].tensor
