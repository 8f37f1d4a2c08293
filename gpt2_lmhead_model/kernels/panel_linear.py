"""Graph wrapper of the `panel_linear` op: y = act(x @ W + b) on CPU."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .panels import PANEL

PANEL_DTYPES = (DType.float32, DType.bfloat16, DType.float16)
"""The weight types the panel kernels stream (`panels.is_panel_dtype`)."""


def check_panel_dtype(op: str, w_panels: TensorValue) -> None:
    if w_panels.dtype not in PANEL_DTYPES:
        names = ", ".join(str(d) for d in PANEL_DTYPES)
        raise ValueError(f"{op}: weight dtype {w_panels.dtype} is not one of {names}")


def panel_linear(
    x: TensorValue, w_panels: TensorValue, bias: TensorValue, activation: int
) -> TensorValue:
    """`x [M, K]` float32, `w_panels [ceil(N/PANEL), K, PANEL]` from
    `pack_panels` (float32, bfloat16 or float16), `bias [N]`; `activation`
    an `ACT_*` code of `panels`."""
    n = bias.shape[0]
    if w_panels.shape[2] != PANEL:
        raise ValueError(f"panel_linear: weight {w_panels.shape} is not packed")
    check_panel_dtype("panel_linear", w_panels)
    return ops.custom(
        name="panel_linear",
        device=x.device,
        values=[x, w_panels, bias],
        out_types=[TensorType(DType.float32, [x.shape[0], n], device=x.device)],
        parameters={"activation": activation},
    )[0].tensor
