"""Graph wrapper of the `panel_matmul` op: y = x @ W on CPU (the LM head)."""

from __future__ import annotations

from max.dtype import DType
from max.graph import StaticDim, TensorType, TensorValue, ops

from .panels import PANEL, panel_count


def panel_matmul(x: TensorValue, w_panels: TensorValue, n: int) -> TensorValue:
    """`x [M, K]` float32 times `w_panels` (`pack_panels` of a `[K, n]`)."""
    panels = w_panels.shape[0]
    if w_panels.shape[2] != PANEL or (
        isinstance(panels, StaticDim) and int(panels) != panel_count(n)
    ):
        raise ValueError(
            f"panel_matmul: weight {w_panels.shape} is not packed for width {n}"
        )
    return ops.custom(
        name="panel_matmul",
        device=x.device,
        values=[x, w_panels],
        out_types=[TensorType(DType.float32, [x.shape[0], n], device=x.device)],
    )[0].tensor
