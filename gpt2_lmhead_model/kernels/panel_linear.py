"""Graph wrapper of the `panel_linear` op: y = act(x @ W + b) on CPU."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .panels import PANEL


def panel_linear(
    x: TensorValue, w_panels: TensorValue, bias: TensorValue, activation: int
) -> TensorValue:
    """`x [M, K]` float32, `w_panels [ceil(N/PANEL), K, PANEL]` from
    `pack_panels`, `bias [N]`; `activation` an `ACT_*` code of `panels`."""
    n = bias.shape[0]
    if w_panels.shape[2] != PANEL:
        raise ValueError(f"panel_linear: weight {w_panels.shape} is not packed")
    return ops.custom(
        name="panel_linear",
        device=x.device,
        values=[x, w_panels, bias],
        out_types=[TensorType(DType.float32, [x.shape[0], n], device=x.device)],
        parameters={"activation": activation},
    )[0].tensor
