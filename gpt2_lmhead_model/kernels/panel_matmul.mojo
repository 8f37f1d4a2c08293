"""`panel_matmul`: y = x @ W, W packed in panels (see `panels`): the LM head."""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext

from .panels import ACT_NONE, F32, check_shapes, panel_matmul


@extensibility.register("panel_matmul")
struct PanelMatmul:
    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=F32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_matmul runs on CPU only")
        check_shapes(
            "panel_matmul",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), x.dim_size(1), x.stride_length(0), x.stride_length(1),
            w.dim_size(0), w.dim_size(1), w.dim_size(2),
        )
        # No bias: the weight pointer stands in and is never read as one.
        panel_matmul[ACT_NONE, False](
            x.unsafe_ptr(), w.unsafe_ptr(), w.unsafe_ptr(), y.unsafe_ptr(),
            x.dim_size(0), x.dim_size(1), y.dim_size(1),
        )
