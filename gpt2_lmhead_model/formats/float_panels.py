"""Float matrices in panels for this package's `panel_linear` (and, for
the bias-free head, `panel_matmul`) kernels on CPU.

float32 panels hold float32 weights; half panels hold a GGUF file's F16 or
BF16 matrices as they are, widened exactly to float32 in registers, so the
math is float32's on the file's own weights at half the bytes. The kernels
stream the weights near memory bandwidth where MAX 26.7's generic CPU
matmul reaches about half of it on decode shapes (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight
from max.graph.weights import WeightData

from ..kernels.panel_linear import panel_linear
from ..kernels.panel_matmul import panel_matmul
from ..kernels.panels import PANEL, pack_panels, panel_count
from .base import StoredTensor, WeightFormat, from_raw_array, zeros_if_none


@dataclass(frozen=True)
class FloatPanels(WeightFormat):
    """`W` as `[ceil(out/PANEL), in, PANEL]` panels of `dtype` (float32, or a
    GGUF file's float16/bfloat16); anything else the file holds is
    dequantized to float32 first."""

    dtype: DType = DType.float32
    needs_kernels = True
    fuses_activations = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.dtype.name} panels (panel_linear)")

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        if stored.ggml_type is None and stored.dtype == self.dtype:
            w_in_out = stored.array.T  # bfloat16 as its raw words
        elif self.dtype == DType.float32:
            w_in_out = stored.float32().T
        else:
            raise ValueError(
                f"{stored.name}: {self.dtype} panels need {self.dtype} weights"
            )
        return {
            stored.name: from_raw_array(pack_panels(w_in_out), stored.name, self.dtype)
        }

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        shape = (panel_count(out_dim), in_dim, PANEL)
        return {"weight": Weight("weight", self.dtype, shape, device)}

    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        w = weights["weight"]
        if bias is None and self.dtype == DType.float32:
            return panel_matmul(x, w, out_dim)  # the head: no bias, no activation
        return panel_linear(x, w, zeros_if_none(bias, out_dim, x), activation)
