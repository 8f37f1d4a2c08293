"""`panel_q4k_linear`: y = act(x @ W + b), W a ggml Q4_K matrix repacked at
load into panels (`pack_q4k_panels`).

Q4_K stores a 4-bit code `q` per weight; a super-block of 256 values of K
has an fp16 scale `d` and min `dmin`, each 32-value sub-block 6-bit
multipliers `sc` and `m`, and the weight is `d*sc * q - dmin*m`. Repacked,
a panel streams per 8 values of K one 32-bit word per column (8 codes),
per sub-block one byte of `sc` and of `m` per column, and per super-block
`d` and `dmin` as float32: 4.75 bits per weight against the file's 4.5.

Rebuilding every weight as a float costs more arithmetic than two cores
can do at memory speed, so, as llama.cpp and MAX's own ggml kernels do,
the codes meet integer activations: each 32 values of a row of x are
rounded to int8 on a scale of their own (`amax / 127`), the code-activation
dot products run four bytes per 32-bit lane (`byte_dot`: VNNI's `vpdpbusd`,
AVX2's `pmaddubsw`, ARM's `sdot` or a portable form, by target), and per
sub-block the integer sums turn float:
`xscale * (d*sc * sum(q * x8) - dmin*m * sum(x8))`. That is float math on
the dequantized matrix and the rounded x. The min term
takes the sum of the rounded x, not of x: the error is then `W @ dx`,
where with the float sum it would be `(W + dmin*m) @ dx`, and the mins
are about half a block's range (measured: twice the logit error).
"""

from std.math import fma
from std.memory import alloc, bitcast
from std.runtime import parallelism_level
from std.utils import StaticTuple

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext

from .byte_dot import dot_small_codes
from .panels import F32, PANEL, SIMD_WIDTH, Vec, check_shapes, quantize_rows, store_rows

comptime Q4K_SUPER = 256
"""Values of K per super-block (`d`, `dmin`): ggml's `QK_K`."""
comptime Q4K_SUB = 32
"""Values of K per sub-block (`sc`, `m`), and per activation scale."""
comptime CODES_PER_WORD = 8
"""4-bit codes per 32-bit word: byte `b` holds the codes of K offsets `b`
(low nibble) and `4 + b` (high nibble), so masking the low nibbles gives
four K-consecutive bytes, as `vpdpbusd` pairs them with four of x."""
comptime Q4K_ROWS = 8 if SIMD_WIDTH >= 16 else 1
"""Rows per register block. Each row holds an integer and a float
accumulator per register of the panel, so 8 rows spill some of AVX-512's
32 registers; measured, 8 still beat 4 (engine batch 8: 1508 against 1332
tok/s). AVX2's 16 registers hold one row, and so do NEON's 32 (a panel
row is 8 registers of 4 lanes there: 16 accumulators per row; the
neoverse-n1 build's K loop keeps them all in registers)."""
comptime CHUNKS = PANEL // SIMD_WIDTH
"""Registers per panel row."""
comptime DECODED = CHUNKS if SIMD_WIDTH >= 16 else 1
"""Registers of the panel row decoded together, so that each row's
broadcasts of x serve them all (AVX-512's two; one of AVX2's). Measured,
engine medians of 3 alternating rounds, DistilGPT2 shape: batch 1
499.8 tok/s against 465.3 one at a time, batch 32 1750 against 1713;
GPT-2 XL (bandwidth-bound) unchanged."""
comptime I32s = SIMD[DType.int32, SIMD_WIDTH]
comptime F32s = SIMD[F32, SIMD_WIDTH]
comptime NIBBLES = I32s(0x0F0F0F0F)


@always_inline
def q4k_row_block[
    rows: Int, act: Int
](
    x8: Pointer[Int32, MutAnyOrigin],
    x_scale: Pointer[Float32, MutAnyOrigin],
    x_sum: Pointer[Float32, MutAnyOrigin],
    codes: Pointer[UInt32, MutAnyOrigin],
    sub_scales: Pointer[UInt8, MutAnyOrigin],
    super_scales: Pointer[Float32, MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    var acc = StaticTuple[F32s, rows * CHUNKS](fill=F32s(0))
    var subs = k_dim // Q4K_SUB
    var supers = k_dim // Q4K_SUPER
    var words_per_row = k_dim // 4  # of x8
    var c_panel = codes.unsafe_offset(panel * (k_dim // CODES_PER_WORD) * PANEL)
    var s_panel = sub_scales.unsafe_offset(panel * subs * 2 * PANEL)
    var d_panel = super_scales.unsafe_offset(panel * supers * 2 * PANEL)
    for sub in range(subs):
        var dots = StaticTuple[I32s, rows * CHUNKS](fill=I32s(0))
        for word in range(sub * (Q4K_SUB // CODES_PER_WORD), (sub + 1) * (Q4K_SUB // CODES_PER_WORD)):
            comptime for first in range(0, CHUNKS, DECODED):
                var low = StaticTuple[I32s, DECODED](fill=I32s(0))
                var high = StaticTuple[I32s, DECODED](fill=I32s(0))
                comptime for c in range(DECODED):
                    var packed = bitcast[DType.int32, SIMD_WIDTH](
                        c_panel.unsafe_load[width=SIMD_WIDTH](word * PANEL + (first + c) * SIMD_WIDTH)
                    )
                    low[c] = packed & NIBBLES
                    high[c] = (packed >> 4) & NIBBLES
                comptime for r in range(rows):
                    var x_at = (row0 + r) * words_per_row + 2 * word
                    var x_low = I32s(x8.unsafe_load(x_at))
                    var x_high = I32s(x8.unsafe_load(x_at + 1))
                    comptime for c in range(DECODED):
                        var i = r * CHUNKS + first + c
                        dots[i] = dot_small_codes(dots[i], low[c], x_low)
                        dots[i] = dot_small_codes(dots[i], high[c], x_high)
        var sup = sub // (Q4K_SUPER // Q4K_SUB)
        comptime for c in range(CHUNKS):
            var lane = c * SIMD_WIDTH
            var d = d_panel.unsafe_load[width=SIMD_WIDTH](2 * sup * PANEL + lane)
            var dmin = d_panel.unsafe_load[width=SIMD_WIDTH]((2 * sup + 1) * PANEL + lane)
            var scale = d * s_panel.unsafe_load[width=SIMD_WIDTH](2 * sub * PANEL + lane).cast[F32]()
            var minimum = dmin * s_panel.unsafe_load[width=SIMD_WIDTH]((2 * sub + 1) * PANEL + lane).cast[F32]()
            comptime for r in range(rows):
                var block = (row0 + r) * subs + sub
                var i = r * CHUNKS + c
                acc[i] = fma(scale * x_scale.unsafe_load(block), dots[i].cast[F32](), acc[i])
                acc[i] = fma(minimum, F32s(-x_sum.unsafe_load(block)), acc[i])

    var out = StaticTuple[Vec, rows](fill=Vec(0))
    comptime for r in range(rows):
        comptime for c in range(CHUNKS):
            out[r] = out[r].insert[offset=c * SIMD_WIDTH](acc[r * CHUNKS + c])
    store_rows[rows, act, True](out, bias, y, row0, panel, n_dim)


def q4k_panel_matmul[
    act: Int
](
    x: Pointer[Float32, MutAnyOrigin],
    codes: Pointer[UInt32, MutAnyOrigin],
    sub_scales: Pointer[UInt8, MutAnyOrigin],
    super_scales: Pointer[Float32, MutAnyOrigin],
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
    var blocks = m_dim * (k_dim // Q4K_SUB)
    var x8_buf = alloc[Int32](m_dim * k_dim // 4)
    var x_scale_buf = alloc[Float32](blocks)
    var x_sum_buf = alloc[Float32](blocks)
    var x8 = x8_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_scale = x_scale_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_sum = x_sum_buf.unsafe_origin_cast[MutAnyOrigin]()
    quantize_rows(x, x8, x_scale, x_sum, m_dim, k_dim)

    def work(worker: Int) {imm x8, imm x_scale, imm x_sum, imm codes, imm sub_scales, imm super_scales, imm bias, imm y, imm m_dim, imm k_dim, imm n_dim, imm panels, imm workers}:
        for panel in range(worker * panels // workers, (worker + 1) * panels // workers):
            var row0 = 0
            while m_dim - row0 >= Q4K_ROWS:
                q4k_row_block[Q4K_ROWS, act](x8, x_scale, x_sum, codes, sub_scales, super_scales, bias, y, row0, panel, k_dim, n_dim)
                row0 += Q4K_ROWS
            var left = m_dim - row0
            comptime for rows in range(1, Q4K_ROWS):
                if left == rows:
                    q4k_row_block[rows, act](x8, x_scale, x_sum, codes, sub_scales, super_scales, bias, y, row0, panel, k_dim, n_dim)

    sync_parallelize(work, workers)
    x8_buf.unsafe_free()
    x_scale_buf.unsafe_free()
    x_sum_buf.unsafe_free()


@extensibility.register("panel_q4k_linear")
struct PanelQ4KLinear[activation: Int]:
    """`activation` is one of the `ACT_*` codes of `panels`."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        codes: InputTensor[dtype=DType.uint32, rank=3, ...],
        sub_scales: InputTensor[dtype=DType.uint8, rank=4, ...],
        super_scales: InputTensor[dtype=F32, rank=4, ...],
        bias: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_q4k_linear runs on CPU only")
        var k_dim = x.dim_size(1)
        check_shapes(
            "panel_q4k_linear",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), k_dim, x.stride_length(0), x.stride_length(1),
            codes.dim_size(0), codes.dim_size(1) * CODES_PER_WORD, codes.dim_size(2),
        )
        if k_dim % Q4K_SUPER != 0:
            raise Error("panel_q4k_linear: K is not a multiple of 256")
        var panels = codes.dim_size(0)
        if (
            sub_scales.dim_size(0) != panels
            or sub_scales.dim_size(1) != k_dim // Q4K_SUB
            or sub_scales.dim_size(2) != 2
            or sub_scales.dim_size(3) != PANEL
            or super_scales.dim_size(0) != panels
            or super_scales.dim_size(1) != k_dim // Q4K_SUPER
            or super_scales.dim_size(2) != 2
            or super_scales.dim_size(3) != PANEL
        ):
            raise Error("panel_q4k_linear: scales do not match the code panels")
        if bias.dim_size(0) != y.dim_size(1):
            raise Error("panel_q4k_linear: bias length is not y's width")
        q4k_panel_matmul[Self.activation](
            x.unsafe_ptr(), codes.unsafe_ptr(), sub_scales.unsafe_ptr(),
            super_scales.unsafe_ptr(), bias.unsafe_ptr(), y.unsafe_ptr(),
            x.dim_size(0), k_dim, y.dim_size(1),
        )
