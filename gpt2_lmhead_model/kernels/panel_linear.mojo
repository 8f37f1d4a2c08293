"""`panel_linear`: y = act(x @ W + b), W packed in panels (see `panels`) of
float32, bfloat16 or float16."""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext

from .panels import F32, check_shapes, is_panel_dtype, panel_matmul


@extensibility.register("panel_linear")
struct PanelLinear[activation: Int]:
    """`activation` is one of the `ACT_*` codes of `panels`."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[rank=3, ...],
        bias: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_linear runs on CPU only")
        comptime if not is_panel_dtype[w.dtype]():
            raise Error("panel_linear: weights must be float32, bfloat16 or float16")
        check_shapes(
            "panel_linear",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), x.dim_size(1), x.stride_length(0), x.stride_length(1),
            w.dim_size(0), w.dim_size(1), w.dim_size(2),
        )
        if bias.dim_size(0) != y.dim_size(1):
            raise Error("panel_linear: bias length is not y's width")
        panel_matmul[Self.activation, True, w.dtype](
            x.unsafe_ptr(), w.unsafe_ptr(), bias.unsafe_ptr(), y.unsafe_ptr(),
            x.dim_size(0), x.dim_size(1), y.dim_size(1),
        )
