"""GPT-2's building blocks that know nothing of GPT-2's wiring: its
activations, and a linear layer whose weight format the routing plan
chose."""

from __future__ import annotations

import functools
from collections.abc import Callable

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight, ops
from max.nn.layer import Module

from .formats import WeightFormat
from .kernels.panels import ACT_NONE, FUSED_ACTIVATIONS

Activation = Callable[[TensorValue], TensorValue]

# The formulas behind transformers' ACT2FN names, and the only list of the
# names a checkpoint may use (`model_config` refuses any other). gelu_new,
# gelu_fast, gelu_accurate and gelu_pytorch_tanh are all the tanh
# approximation.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": ops.gelu,
    "gelu_new": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_fast": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_accurate": functools.partial(ops.gelu, approximate="tanh"),
    "quick_gelu": functools.partial(ops.gelu, approximate="quick"),
    "relu": ops.relu,
    "silu": ops.silu,
    "swish": ops.silu,
    "tanh": ops.tanh,
}


class GPT2Linear(Module):
    """`activation(x @ W.T + b)`, `W` held and multiplied as `fmt` says.

    The activation runs inside the kernel when the format fuses it, else as
    a graph op after it. The head is one of these without a bias.
    """

    def __init__(
        self,
        fmt: WeightFormat,
        in_dim: int,
        out_dim: int,
        dtype: DType,
        device: DeviceRef,
        *,
        activation: str | None = None,
        has_bias: bool = True,
    ) -> None:
        super().__init__()
        self.fmt = fmt
        self.out_dim = out_dim
        self.activation = activation
        self._weight_names: list[str] = []
        for name, weight in fmt.declare(in_dim, out_dim, device).items():
            setattr(self, name, weight)
            self._weight_names.append(name)
        self.bias = Weight("bias", dtype, (out_dim,), device) if has_bias else None

    def __call__(self, x: TensorValue) -> TensorValue:
        weights = {n: getattr(self, n).to(x.device) for n in self._weight_names}
        bias = self.bias.to(x.device) if self.bias is not None else None
        fused = ACT_NONE
        if self.fmt.fuses_activations and self.activation is not None:
            fused = FUSED_ACTIVATIONS.get(self.activation, ACT_NONE)
        y = self.fmt.matmul(x, weights, bias, self.out_dim, fused)
        if self.activation is not None and fused == ACT_NONE:
            y = ACTIVATIONS[self.activation](y)
        return y
