"""MAX's own matmul on a plain float matrix: any device, any float dtype.

The route for GPUs (where ggml blocks are dequantized at load: MAX's ggml
kernels are CPU-only) and for bfloat16 on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight
from max.graph.weights import WeightData

from .base import StoredTensor, WeightFormat


@dataclass(frozen=True)
class Dense(WeightFormat):
    """`x @ W.T` with `W [out, in]` in `dtype`; ggml blocks dequantized.

    `in_out` stores `W` as `[in, out]` and computes `x @ W`: MAX's CPU
    GEMV read the 50257-wide head faster in that layout when timed during
    bring-up (docs/BRINGUP.md), so the CPU head uses it.
    """

    dtype: DType
    in_out: bool = False

    def __post_init__(self) -> None:
        layout = ", [in, out]" if self.in_out else ""
        object.__setattr__(self, "label", f"{self.dtype.name} (MAX matmul{layout})")

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        source = stored
        if self.in_out:
            if stored.ggml_type is not None:
                values = stored.float32()
                source = StoredTensor(stored.name, values, DType.float32, stored.shape)
            source = source.transposed()
        return {stored.name: source.weight_data(self.dtype)}

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        shape = (in_dim, out_dim) if self.in_out else (out_dim, in_dim)
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
        y = x @ w if self.in_out else x @ w.T
        return y if bias is None else y + bias

    @property
    def shares_embedding(self) -> bool:
        """Whether a tied head can bind `wte` itself rather than a copy."""
        return not self.in_out
