"""`panel_q8_linear`: y = act(x @ W + b), W in int8 panels with a scale per
32 values of K and column: ggml's Q8_0, repacked at load (`pack_q8_panels`).

A panel is `[K, PANEL]` int8 (one byte per weight streamed, plus a float32
scale per 32); each row of it is widened to float32 and scaled in registers,
then accumulates like `panels.row_block`. `q * d` is exact in float32 (an
8-bit integer times an fp16 scale), so the sums equal those of the float32
panels over the dequantized matrix.
"""

from std.math import fma
from std.runtime import parallelism_level
from std.utils import StaticTuple

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext

from .panels import F32, MAX_ROWS, PANEL, SIMD_WIDTH, Vec, check_shapes, store_rows

comptime Q8_BLOCK = 32
"""Values of K per scale: ggml's `QK8_0`."""
comptime Q8_ROWS = MAX_ROWS if SIMD_WIDTH >= 16 else 2
"""Rows per register block. With AVX2 a widened panel row and its scales
take 8 of the 16 registers, so fewer accumulators fit than for float32."""


@always_inline
def q8_row_block[
    rows: Int, act: Int
](
    x: Pointer[Float32, MutAnyOrigin],
    q: Pointer[Int8, MutAnyOrigin],
    scales: Pointer[Float32, MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    var acc = StaticTuple[Vec, rows](fill=Vec(0))
    var q_panel = q.unsafe_offset(panel * k_dim * PANEL)
    var s_panel = scales.unsafe_offset(panel * (k_dim // Q8_BLOCK) * PANEL)
    var x_rows = x.unsafe_offset(row0 * k_dim)
    for block in range(k_dim // Q8_BLOCK):
        var scale = s_panel.unsafe_load[width=PANEL](block * PANEL)
        for k in range(block * Q8_BLOCK, (block + 1) * Q8_BLOCK):
            var w_row = q_panel.unsafe_load[width=PANEL](k * PANEL).cast[F32]() * scale
            comptime for r in range(rows):
                acc[r] = fma(Vec(x_rows.unsafe_load(r * k_dim + k)), w_row, acc[r])

    store_rows[rows, act, True](acc, bias, y, row0, panel, n_dim)


def q8_panel_matmul[
    act: Int
](
    x: Pointer[Float32, MutAnyOrigin],
    q: Pointer[Int8, MutAnyOrigin],
    scales: Pointer[Float32, MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    m_dim: Int,
    k_dim: Int,
    n_dim: Int,
):
    var panels = (n_dim + PANEL - 1) // PANEL
    var workers = min(parallelism_level(), panels)
    if m_dim == 0 or workers <= 0:
        return

    def work(worker: Int) {imm x, imm q, imm scales, imm bias, imm y, imm m_dim, imm k_dim, imm n_dim, imm panels, imm workers}:
        for panel in range(worker * panels // workers, (worker + 1) * panels // workers):
            var row0 = 0
            while m_dim - row0 >= Q8_ROWS:
                q8_row_block[Q8_ROWS, act](x, q, scales, bias, y, row0, panel, k_dim, n_dim)
                row0 += Q8_ROWS
            var left = m_dim - row0
            comptime for rows in range(1, Q8_ROWS):
                if left == rows:
                    q8_row_block[rows, act](x, q, scales, bias, y, row0, panel, k_dim, n_dim)

    sync_parallelize(work, workers)


@extensibility.register("panel_q8_linear")
struct PanelQ8Linear[activation: Int]:
    """`activation` is one of the `ACT_*` codes of `panels`."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        q: InputTensor[dtype=DType.int8, rank=3, ...],
        scales: InputTensor[dtype=F32, rank=3, ...],
        bias: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_q8_linear runs on CPU only")
        check_shapes(
            "panel_q8_linear",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), x.dim_size(1), x.stride_length(0), x.stride_length(1),
            q.dim_size(0), q.dim_size(1), q.dim_size(2),
        )
        if x.dim_size(1) % Q8_BLOCK != 0:
            raise Error("panel_q8_linear: K is not a multiple of 32")
        if (
            scales.dim_size(0) != q.dim_size(0)
            or scales.dim_size(1) != x.dim_size(1) // Q8_BLOCK
            or scales.dim_size(2) != PANEL
        ):
            raise Error("panel_q8_linear: scales do not match the int8 panels")
        if bias.dim_size(0) != y.dim_size(1):
            raise Error("panel_q8_linear: bias length is not y's width")
        q8_panel_matmul[Self.activation](
            x.unsafe_ptr(), q.unsafe_ptr(), scales.unsafe_ptr(), bias.unsafe_ptr(),
            y.unsafe_ptr(), x.dim_size(0), x.dim_size(1), y.dim_size(1),
        )
