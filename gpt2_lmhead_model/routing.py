"""Which format runs each weight matrix: decided once, per tensor, from
the device, the activation dtype and how the file stores the matrix.

The plan is made by `GPT2Config.finalize` from the adapter's stored
tensors; loading (`WeightPlan.pack`), the graph (`layers.GPT2Linear`) and
`gpt2-max verify`'s table all read it, and nothing else decides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import gguf
from max.dtype import DType
from max.graph import DeviceRef
from max.graph.quantization import QuantizationEncoding
from max.graph.weights import WeightData

from .formats import (
    Dense,
    FloatPanels,
    MaxGGML,
    Q4KPanels,
    Q6KPanels,
    Q8Panels,
    StoredTensor,
    WeightFormat,
)

Q = gguf.GGMLQuantizationType

CPU_GGML_FORMATS: dict[Q, WeightFormat] = {
    Q.Q8_0: Q8Panels(),
    Q.Q4_K: Q4KPanels(),
    Q.Q6_K: Q6KPanels(),
    Q.Q4_0: MaxGGML(QuantizationEncoding.Q4_0),
}
"""On CPU, the ggml encodings that run as stored. Any other (Q5_K, ...),
and every encoding off the CPU, where MAX's ggml kernels do not run, is
dequantized at load."""

GGML_KERNELS_SWITCH = "GPT2_MAX_GGML_KERNELS"
"""`max`: Q4_K and Q6_K matrices on MAX's own ggml matmul (`ops.qmatmul`)
instead of this package's panel kernels (`ours`, the default): the other
side of the benchmark's kernel ablation (`bench/ablations.py`)."""
MAX_GGML_FORMATS: dict[Q, WeightFormat] = {
    Q.Q4_K: MaxGGML(QuantizationEncoding.Q4_K),
    Q.Q6_K: MaxGGML(QuantizationEncoding.Q6_K),
}
"""What `GPT2_MAX_GGML_KERNELS=max` puts in place of `CPU_GGML_FORMATS`'."""


def cpu_ggml_formats() -> dict[Q, WeightFormat]:
    """`CPU_GGML_FORMATS`, with MAX's kernels where `GGML_KERNELS_SWITCH`
    asks for them. Read where the plan is made, so in `max serve`'s model
    worker, which inherits the server's environment."""
    value = os.environ.get(GGML_KERNELS_SWITCH, "ours")
    if value == "ours":
        return CPU_GGML_FORMATS
    if value == "max":
        return {**CPU_GGML_FORMATS, **MAX_GGML_FORMATS}
    raise ValueError(f"{GGML_KERNELS_SWITCH}={value!r}: expected 'ours' or 'max'")


HEAD = "lm_head"


def matrix_names(n_layer: int) -> list[str]:
    """Every matrix a GPT-2 multiplies by, as its layer's name."""
    blocks = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    return [f"h.{i}.{m}" for i in range(n_layer) for m in blocks] + [HEAD]


HALF_FLOATS = (DType.float16, DType.bfloat16)


def choose_format(
    stored_dtype: DType,
    ggml_type: Q | None,
    device: DeviceRef,
    dtype: DType,
    is_head: bool = False,
) -> WeightFormat:
    """The format for one matrix stored as `stored_dtype` (`ggml_type` for
    ggml blocks), on `device`, in a graph computing in `dtype`.

    On CPU in float32, plain floats run on the panel kernels in the file's
    own width (half floats widen exactly in registers, at half the bytes).
    """
    if device.is_cpu():
        ggml_formats = cpu_ggml_formats()
        if ggml_type in ggml_formats:
            return ggml_formats[ggml_type]
        if dtype == DType.float32:
            half = ggml_type is None and stored_dtype in HALF_FLOATS
            return FloatPanels(stored_dtype if half else DType.float32)
    # GPUs, and bfloat16 on CPU: MAX's matmul (x @ W on a CPU head).
    return Dense(dtype, in_out=is_head and device.is_cpu())


@dataclass(frozen=True)
class WeightPlan:
    """Matrix name (`h.0.attn.c_attn`, ..., `lm_head`) -> its format."""

    formats: Mapping[str, WeightFormat]
    dtype: DType
    """Embeddings, norms, biases, and every `Dense` matrix."""
    tied: bool
    """The head is the token embedding (the file stores no head of its own)."""

    @property
    def head_shares_wte(self) -> bool:
        """A tied head binds `wte` itself; any other layout holds a copy."""
        head = self.formats[HEAD]
        return self.tied and isinstance(head, Dense) and head.shares_embedding

    @property
    def needs_kernels(self) -> bool:
        return any(f.needs_kernels for f in self.formats.values())

    def __getitem__(self, matrix: str) -> WeightFormat:
        return self.formats[matrix]

    def pack(self, stored: Mapping[str, StoredTensor]) -> dict[str, WeightData]:
        """The graph's weights: each matrix as its format holds it, every
        other tensor in `dtype`."""
        out: dict[str, WeightData] = {}
        for name, tensor in stored.items():
            matrix = name.removesuffix(".weight")
            if matrix in self.formats:
                out.update(self.formats[matrix].pack(tensor))
            else:
                out[name] = tensor.weight_data(self.dtype)
        if self.tied and not self.head_shares_wte:
            wte = stored["wte.weight"]
            head = StoredTensor(
                f"{HEAD}.weight", wte.array, wte.dtype, wte.shape, wte.ggml_type
            )
            out.update(self.formats[HEAD].pack(head))
        return out


def route_weights(
    stored: Mapping[str, StoredTensor],
    n_layer: int,
    device: DeviceRef,
    dtype: DType,
) -> WeightPlan:
    """One format per matrix; the head's from `wte` when the file has none."""
    tied = f"{HEAD}.weight" not in stored
    formats = {}
    for matrix in matrix_names(n_layer):
        source = "wte.weight" if matrix == HEAD and tied else f"{matrix}.weight"
        tensor = stored[source]
        formats[matrix] = choose_format(
            tensor.dtype, tensor.ggml_type, device, dtype, matrix == HEAD
        )
    return WeightPlan(formats, dtype, tied)
