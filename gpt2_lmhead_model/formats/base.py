"""What every weight format shares: the stored tensor it starts from, and
the three things it decides for one matrix (how it is repacked at load,
which graph weights it declares, which op multiplies by it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import gguf
import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import DeviceRef, Shape, TensorValue, Weight, ops
from max.graph.weights import WeightData

Dims = tuple[int, ...]


@dataclass(frozen=True)
class StoredTensor:
    """One checkpoint tensor under its graph name, as the file stores it.

    Matrices are `[out, in]` (a `Linear`'s layout, and ggml's rows).
    `array` holds plain floats (bfloat16 as its raw 16-bit words, which
    NumPy lacks), or, with a `ggml_type`, the rows of ggml blocks as bytes.
    """

    name: str
    array: np.ndarray
    dtype: DType
    shape: Dims
    ggml_type: gguf.GGMLQuantizationType | None = None

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    def float32(self) -> np.ndarray:
        """The values as float32: ggml blocks dequantized, half floats
        widened (exactly)."""
        if self.ggml_type is not None:
            values = gguf.quants.dequantize(self.array, self.ggml_type)
            return np.ascontiguousarray(values.reshape(self.shape), np.float32)
        if self.dtype == DType.bfloat16:
            words = self.array.astype(np.uint32) << 16
            return words.view(np.float32)
        return np.asarray(self.array, dtype=np.float32)

    def weight_data(self, dtype: DType, name: str | None = None) -> WeightData:
        """The values in `dtype`; no rounding when the file already holds it."""
        name = name or self.name
        if self.ggml_type is None and self.dtype == dtype:
            return from_raw_array(self.array, name, dtype)
        data = WeightData.from_numpy(np.ascontiguousarray(self.float32()), name)
        return data if dtype == DType.float32 else data.astype(dtype)

    def transposed(self) -> StoredTensor:
        """`[in, out]` (a view; plain floats only)."""
        assert self.ggml_type is None
        return StoredTensor(self.name, self.array.T, self.dtype, self.shape[::-1])


def raw_array(data: WeightData) -> np.ndarray:
    """A loaded tensor as NumPy, bfloat16 as its raw 16-bit words, so it can
    be moved without being rounded or widened."""
    if data.dtype == DType.bfloat16:
        return data.to_buffer().view(DType.uint16).to_numpy()
    return np.from_dlpack(data.data)


def from_raw_array(array: np.ndarray, name: str, dtype: DType) -> WeightData:
    """The inverse of `raw_array`."""
    if dtype == DType.bfloat16:
        words = Buffer.from_numpy(np.ascontiguousarray(array, dtype=np.uint16))
        return WeightData(words.view(DType.bfloat16), name, dtype, Shape(array.shape))
    return WeightData.from_numpy(np.ascontiguousarray(array), name)


class WeightFormat(ABC):
    """How one `[out, in]` matrix is held and multiplied.

    A format's graph weights are the layer's `weight` and its companions
    (`weight_scale`, ...): `declare` and `pack` name them alike.
    """

    label: str = "?"
    """What `gpt2-max verify` and the docs call it."""
    needs_kernels: ClassVar[bool] = False
    """Whether its op is one of this package's Mojo kernels."""
    fuses_activations: ClassVar[bool] = False
    """Whether its op applies GPT-2's GELUs itself (`kernels.panels`)."""

    @abstractmethod
    def pack(self, stored: StoredTensor) -> dict[str, WeightData]:
        """The matrix as the op reads it, by graph weight name (the stored
        name, then each companion's with its suffix: `packed`)."""

    @abstractmethod
    def declare(
        self, in_dim: int, out_dim: int, device: DeviceRef
    ) -> dict[str, Weight]:
        """The graph weights the op reads, by attribute name."""

    @abstractmethod
    def matmul(
        self,
        x: TensorValue,
        weights: dict[str, TensorValue],
        bias: TensorValue | None,
        out_dim: int,
        activation: int,
    ) -> TensorValue:
        """`x @ W.T + bias`, then the fused `activation` (an `ACT_*` code;
        always `ACT_NONE` unless `fuses_activations`)."""


def packed(stored: StoredTensor, **parts: np.ndarray) -> dict[str, WeightData]:
    """Repacked NumPy arrays as graph weights: `weight=` is the stored
    name, `scale=` becomes `<name>_scale`, and so on."""
    out = {}
    for part, array in parts.items():
        name = stored.name if part == "weight" else f"{stored.name}_{part}"
        out[name] = WeightData.from_numpy(np.ascontiguousarray(array), name)
    return out


def declared(device: DeviceRef, **parts: tuple[DType, Dims]) -> dict[str, Weight]:
    """Graph weights by attribute: `weight=` is `weight`, `scale=` is
    `weight_scale` (the names `packed` gives their values)."""
    return {
        ("weight" if part == "weight" else f"weight_{part}"): Weight(
            "weight" if part == "weight" else f"weight_{part}", dtype, shape, device
        )
        for part, (dtype, shape) in parts.items()
    }


def zeros_if_none(
    bias: TensorValue | None, out_dim: int, x: TensorValue
) -> TensorValue:
    """The panel kernels take a bias; a bias-free layer (the head) passes
    zeros."""
    if bias is not None:
        return bias
    return ops.broadcast_to(ops.constant(0.0, DType.float32, x.device), [out_dim])


def ggml_rows(stored: StoredTensor) -> np.ndarray:
    """A ggml matrix's blocks, one row of bytes per output row."""
    return np.asarray(stored.array, dtype=np.uint8).reshape(stored.shape[0], -1)
