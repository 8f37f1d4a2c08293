"""Graph wrapper of the `panel_q8_linear` op: y = act(x @ W + b) on CPU,
W a ggml Q8_0 matrix repacked by `pack_q8_panels`."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .panels import PANEL


def panel_q8_linear(
    x: TensorValue,
    codes: TensorValue,
    scales: TensorValue,
    bias: TensorValue,
    activation: int,
) -> TensorValue:
    """`x [M, K]` float32, `codes [ceil(N/PANEL), K/4, PANEL]` uint32 and
    `scales [ceil(N/PANEL), K/32, PANEL]` from `pack_q8_panels`, `bias [N]`;
    `activation` an `ACT_*` code of `panels`."""
    if codes.shape[2] != PANEL or codes.dtype != DType.uint32:
        raise ValueError(f"panel_q8_linear: weight {codes.shape} is not packed")
    return ops.custom(
        name="panel_q8_linear",
        device=x.device,
        values=[x, codes, scales, bias],
        out_types=[TensorType(DType.float32, [x.shape[0], bias.shape[0]], x.device)],
        parameters={"activation": activation},
    )[0].tensor
