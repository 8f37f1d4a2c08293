"""ggml Q8_0 matrices for the `panel_q8_linear` kernel (CPU): int8 codes
and a scale per 32 values, against activations rounded to int8 per 32.
MAX 26.7 has no Q8_0 matmul; llama.cpp writes Q8_0 for `--outtype q8_0`
and for the rows of K-quant files that are not whole 256-blocks."""

from __future__ import annotations

from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight
from max.graph.weights import WeightData

from ..kernels.panel_q8_linear import panel_q8_linear
from ..kernels.panels import (
    PANEL,
    Q8_BLOCK,
    Q8_CODES_PER_WORD,
    pack_q8_panels,
    panel_count,
)
from .base import StoredTensor, WeightFormat, declared, ggml_rows, packed, zeros_if_none


@dataclass(frozen=True)
class Q8Panels(WeightFormat):
    """Codes `[panels, in/4, PANEL]` (four per word) and float32 scales
    `[panels, in/32, PANEL]` (`pack_q8_panels`)."""

    label = "Q8_0 panels (panel_q8_linear)"
    needs_kernels = True
    fuses_activations = True

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        codes, scales = pack_q8_panels(ggml_rows(stored))
        return packed(stored, weight=codes, scale=scales)

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        panels = panel_count(out_dim)
        return declared(
            device,
            weight=(DType.uint32, (panels, in_dim // Q8_CODES_PER_WORD, PANEL)),
            scale=(DType.float32, (panels, in_dim // Q8_BLOCK, PANEL)),
        )

    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        return panel_q8_linear(
            x,
            weights["weight"],
            weights["weight_scale"],
            zeros_if_none(bias, out_dim, x),
            activation,
        )
