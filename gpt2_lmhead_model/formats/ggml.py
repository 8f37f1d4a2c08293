"""MAX's ggml matmul (`ops.qmatmul`) on blocks kept as the file stores
them: CPU only, for the ggml encodings this package has no kernel for and
MAX has (Q4_0), and for Q4_K and Q6_K with `GPT2_MAX_GGML_KERNELS=max`
(`routing`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Shape, TensorValue, Weight, ops
from max.graph.quantization import QuantizationEncoding
from max.graph.weights import WeightData

from .base import StoredTensor, WeightFormat

ROW_TILE = 32
"""MAX's CPU ggml matmuls repack weights in tiles of 32 output rows: the
blocks are padded to it (GPT-2's 50257-row head is the usual case)."""


@dataclass(frozen=True)
class MaxGGML(WeightFormat):
    """`x @ W.T` with `W` in MAX's ggml `encoding`, blocks along `in`."""

    encoding: QuantizationEncoding

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.encoding.name} (MAX qmatmul)")

    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        """The blocks (a copy: weights outlive the file's memory map), all-zero
        rows appended up to `ROW_TILE`; an all-zero block decodes to zeros."""
        blocks = np.asarray(stored.array, dtype=np.uint8).reshape(stored.shape[0], -1)
        extra = -blocks.shape[0] % ROW_TILE
        padded = np.concatenate([blocks, np.zeros((extra, blocks.shape[1]), np.uint8)])
        return {
            stored.name: WeightData(
                padded, stored.name, DType.uint8, Shape(padded.shape), self.encoding
            )
        }

    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        # The shape is a placeholder: loading sets the packed byte shape.
        weight = Weight(
            "weight",
            DType.uint8,
            (out_dim, in_dim),
            device=device,
            quantization_encoding=self.encoding,
        )
        return {"weight": weight}

    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        w = weights["weight"]
        y = ops.qmatmul(self.encoding, None, x, w)
        if int(w.shape[0]) != out_dim:
            y = y[:, :out_dim]  # rows padded at load
        return y if bias is None else y + bias
