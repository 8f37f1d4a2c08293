"""ggml Q6_K matrices for the `panel_q6k_linear` kernel (CPU): low nibbles,
high bit pairs, int8 multipliers per 16 and float32 super-block scales,
against activations rounded to int8 per 32 values. Faster than MAX's Q6_K
matmul (docs/BENCHMARKS.md); Q4_K_M files hold their head in Q6_K."""

from __future__ import annotations

from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight
from max.graph.weights import WeightData

from ..kernels.panel_q6k_linear import panel_q6k_linear
from ..kernels.panels import (
    PANEL,
    Q4K_CODES_PER_WORD,
    Q6K_GROUP,
    Q6K_SUPER,
    pack_q6k_panels,
    panel_count,
)
from .base import StoredTensor, WeightFormat, declared, ggml_rows, packed, zeros_if_none


@dataclass(frozen=True)
class Q6KPanels(WeightFormat):
    """Low nibbles `[panels, in/8, PANEL]` (packed as Q4_K's codes), high bit
    pairs `[panels, in/16, PANEL]`, multipliers `[panels, in/16, PANEL]`,
    scales `[panels, in/256, PANEL]` (`pack_q6k_panels`)."""

    label = "Q6_K panels (panel_q6k_linear)"
    needs_kernels = True
    fuses_activations = True

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        low, high, multipliers, scales = pack_q6k_panels(ggml_rows(stored))
        return packed(
            stored, weight=low, high=high, multipliers=multipliers, scales=scales
        )

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        panels, groups = panel_count(out_dim), in_dim // Q6K_GROUP
        return declared(
            device,
            weight=(DType.uint32, (panels, in_dim // Q4K_CODES_PER_WORD, PANEL)),
            high=(DType.uint32, (panels, groups, PANEL)),
            multipliers=(DType.int8, (panels, groups, PANEL)),
            scales=(DType.float32, (panels, in_dim // Q6K_SUPER, PANEL)),
        )

    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        return panel_q6k_linear(
            x,
            weights["weight"],
            weights["weight_high"],
            weights["weight_multipliers"],
            weights["weight_scales"],
            zeros_if_none(bias, out_dim, x),
            activation,
        )
