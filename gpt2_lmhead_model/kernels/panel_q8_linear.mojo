"""`panel_q8_linear`: y = act(x @ W + b), W a ggml Q8_0 matrix (an int8
code `q` per weight, an fp16 scale `d` per 32 values of K) repacked at load
(`pack_q8_panels`).

Widening every code to float32 and scaling it costs more arithmetic than
two cores can do at memory speed (measured on GPT-2 XL: the Q8_0 matrices
streamed at well under the float32 kernels' rate), so, as llama.cpp's
Q8_0 dot product does, the codes meet integer activations: each 32 values
of a row of x are rounded to int8 on a scale of their own (`quantize_rows`)
and the code-activation products run four bytes per 32-bit lane.

The x86 byte dot product (`vpdpbusd` with VNNI, `pmaddubsw` otherwise)
takes one operand unsigned, so the panels hold `q + 128` (0..255) on every
target: per block, `sum(q * x8) = sum((q + 128) * x8) - 128 * sum(x8)`,
and the float result is `d * (xscale * dot - 128 * x_sum)`, `x_sum` being
the sum of the rounded x. That is float math on the file's exact weights
and the rounded x. Without VNNI the unsaturated dot product is used:
`pmaddubsw`'s 16-bit pair sums would overflow on codes up to 255. ARM's
`sdot` reads both operands signed: that route flips each stored byte's top
bit, which gives back `q` itself, and the offset term drops out
(`byte_dot.UNSIGNED_CODE_BIAS`).
"""

from std.math import fma
from std.memory import alloc, bitcast
from std.runtime import parallelism_level
from std.utils import StaticTuple

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext

from .byte_dot import UNSIGNED_CODE_BIAS, dot_unsigned_codes
from .panels import F32, PANEL, SIMD_WIDTH, Vec, X_BLOCK, check_shapes, quantize_rows, store_rows

comptime Q8_BLOCK = 32
"""Values of K per scale: ggml's `QK8_0`."""
comptime Q8_CODES_PER_WORD = 4
"""int8 codes per 32-bit word: four K-consecutive codes of one column, as
the byte dot product pairs them with four of x."""
comptime Q8_CODE_OFFSET = 128
"""Added to every code at packing, so that codes are unsigned."""
comptime Q8_DOT_OFFSET = Q8_CODE_OFFSET - UNSIGNED_CODE_BIAS
"""The offset left in each code byte as the target's dot product reads it:
128 on x86 and the portable route, 0 with ARM's `sdot`."""
comptime Q8_ROWS = 8 if SIMD_WIDTH >= 16 else 1
"""Rows per register block: each row holds an integer and a float
accumulator per register of the panel (as `panel_q4k_linear`: 8 rows with
AVX-512's 32 registers, one with AVX2's 16, and one with NEON's 32, where
a row's 8 registers of 4 lanes take 16 accumulators)."""
comptime CHUNKS = PANEL // SIMD_WIDTH
"""Registers per panel row."""
comptime I32s = SIMD[DType.int32, SIMD_WIDTH]
comptime F32s = SIMD[F32, SIMD_WIDTH]


@always_inline
def q8_row_block[
    rows: Int, act: Int
](
    x8: Pointer[Int32, MutAnyOrigin],
    x_scale: Pointer[Float32, MutAnyOrigin],
    x_sum: Pointer[Float32, MutAnyOrigin],
    codes: Pointer[UInt32, MutAnyOrigin],
    scales: Pointer[Float32, MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    var acc = StaticTuple[F32s, rows * CHUNKS](fill=F32s(0))
    var blocks = k_dim // Q8_BLOCK
    var words_per_row = k_dim // Q8_CODES_PER_WORD  # of codes and of x8
    var c_panel = codes.unsafe_offset(panel * words_per_row * PANEL)
    var s_panel = scales.unsafe_offset(panel * blocks * PANEL)
    for block in range(blocks):
        var dots = StaticTuple[I32s, rows * CHUNKS](fill=I32s(0))
        for word in range(block * (Q8_BLOCK // Q8_CODES_PER_WORD), (block + 1) * (Q8_BLOCK // Q8_CODES_PER_WORD)):
            var w = StaticTuple[I32s, CHUNKS](fill=I32s(0))
            comptime for c in range(CHUNKS):
                w[c] = bitcast[DType.int32, SIMD_WIDTH](
                    c_panel.unsafe_load[width=SIMD_WIDTH](word * PANEL + c * SIMD_WIDTH)
                )
            comptime for r in range(rows):
                var x_word = I32s(x8.unsafe_load((row0 + r) * words_per_row + word))
                comptime for c in range(CHUNKS):
                    var i = r * CHUNKS + c
                    dots[i] = dot_unsigned_codes(dots[i], w[c], x_word)
        comptime for c in range(CHUNKS):
            var d = s_panel.unsafe_load[width=SIMD_WIDTH](block * PANEL + c * SIMD_WIDTH)
            var offset = d * Float32(Q8_DOT_OFFSET)
            comptime for r in range(rows):
                var at = (row0 + r) * blocks + block
                var i = r * CHUNKS + c
                acc[i] = fma(d * x_scale.unsafe_load(at), dots[i].cast[F32](), acc[i])
                comptime if Q8_DOT_OFFSET != 0:
                    acc[i] = fma(offset, F32s(-x_sum.unsafe_load(at)), acc[i])

    var out = StaticTuple[Vec, rows](fill=Vec(0))
    comptime for r in range(rows):
        comptime for c in range(CHUNKS):
            out[r] = out[r].insert[offset=c * SIMD_WIDTH](acc[r * CHUNKS + c])
    store_rows[rows, act, True](out, bias, y, row0, panel, n_dim)


def q8_panel_matmul[
    act: Int
](
    x: Pointer[Float32, MutAnyOrigin],
    codes: Pointer[UInt32, MutAnyOrigin],
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
    var blocks = m_dim * (k_dim // X_BLOCK)
    var x8_buf = alloc[Int32](m_dim * k_dim // 4)
    var x_scale_buf = alloc[Float32](blocks)
    var x_sum_buf = alloc[Float32](blocks)
    var x8 = x8_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_scale = x_scale_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_sum = x_sum_buf.unsafe_origin_cast[MutAnyOrigin]()
    quantize_rows(x, x8, x_scale, x_sum, m_dim, k_dim)

    def work(worker: Int) {imm x8, imm x_scale, imm x_sum, imm codes, imm scales, imm bias, imm y, imm m_dim, imm k_dim, imm n_dim, imm panels, imm workers}:
        for panel in range(worker * panels // workers, (worker + 1) * panels // workers):
            var row0 = 0
            while m_dim - row0 >= Q8_ROWS:
                q8_row_block[Q8_ROWS, act](x8, x_scale, x_sum, codes, scales, bias, y, row0, panel, k_dim, n_dim)
                row0 += Q8_ROWS
            var left = m_dim - row0
            comptime for rows in range(1, Q8_ROWS):
                if left == rows:
                    q8_row_block[rows, act](x8, x_scale, x_sum, codes, scales, bias, y, row0, panel, k_dim, n_dim)

    sync_parallelize(work, workers)
    x8_buf.unsafe_free()
    x_scale_buf.unsafe_free()
    x_sum_buf.unsafe_free()


@extensibility.register("panel_q8_linear")
struct PanelQ8Linear[activation: Int]:
    """`activation` is one of the `ACT_*` codes of `panels`."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        codes: InputTensor[dtype=DType.uint32, rank=3, ...],
        scales: InputTensor[dtype=F32, rank=3, ...],
        bias: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_q8_linear runs on CPU only")
        var k_dim = x.dim_size(1)
        check_shapes(
            "panel_q8_linear",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), k_dim, x.stride_length(0), x.stride_length(1),
            codes.dim_size(0), codes.dim_size(1) * Q8_CODES_PER_WORD, codes.dim_size(2),
        )
        if k_dim % Q8_BLOCK != 0:
            raise Error("panel_q8_linear: K is not a multiple of 32")
        if (
            scales.dim_size(0) != codes.dim_size(0)
            or scales.dim_size(1) != k_dim // Q8_BLOCK
            or scales.dim_size(2) != PANEL
        ):
            raise Error("panel_q8_linear: scales do not match the code panels")
        if bias.dim_size(0) != y.dim_size(1):
            raise Error("panel_q8_linear: bias length is not y's width")
        q8_panel_matmul[Self.activation](
            x.unsafe_ptr(), codes.unsafe_ptr(), scales.unsafe_ptr(), bias.unsafe_ptr(),
            y.unsafe_ptr(), x.dim_size(0), k_dim, y.dim_size(1),
        )
