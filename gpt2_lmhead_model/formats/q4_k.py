"""ggml Q4_K matrices for the `panel_q4k_linear` kernel (CPU): 4-bit codes,
6-bit sub-block multipliers and float32 super-block scales, against
activations rounded to int8 per 32 values. As fast as MAX's Q4_K matmul
with about 30 % less logit error (per-32 rather than per-256 activation
scales; docs/BENCHMARKS.md)."""

from __future__ import annotations

from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight
from max.graph.weights import WeightData

from ..kernels.panel_q4k_linear import panel_q4k_linear
from ..kernels.panels import (
    PANEL,
    Q4K_CODES_PER_WORD,
    Q4K_SUB,
    Q4K_SUPER,
    pack_q4k_panels,
    panel_count,
)
from .base import StoredTensor, WeightFormat, declared, ggml_rows, packed, zeros_if_none


@dataclass(frozen=True)
class Q4KPanels(WeightFormat):
    """Codes `[panels, in/8, PANEL]`, sub-block scales and mins
    `[panels, in/32, 2, PANEL]`, super-block `d`, `dmin`
    `[panels, in/256, 2, PANEL]` (`pack_q4k_panels`)."""

    label = "Q4_K panels (panel_q4k_linear)"
    needs_kernels = True
    fuses_activations = True

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        codes, sub_scales, super_scales = pack_q4k_panels(ggml_rows(stored))
        return packed(
            stored, weight=codes, sub_scales=sub_scales, super_scales=super_scales
        )

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        panels = panel_count(out_dim)
        return declared(
            device,
            weight=(DType.uint32, (panels, in_dim // Q4K_CODES_PER_WORD, PANEL)),
            sub_scales=(DType.uint8, (panels, in_dim // Q4K_SUB, 2, PANEL)),
            super_scales=(DType.float32, (panels, in_dim // Q4K_SUPER, 2, PANEL)),
        )

    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        return panel_q4k_linear(
            x,
            weights["weight"],
            weights["weight_sub_scales"],
            weights["weight_super_scales"],
            zeros_if_none(bias, out_dim, x),
            activation,
        )
