"""`panel_q6k_linear`: y = act(x @ W + b), W a ggml Q6_K matrix repacked at
load into panels (`pack_q6k_panels`).

Q6_K stores a 6-bit unsigned code `q` per weight; a super-block of 256
values of K has an fp16 scale `d`, each 16 values an int8 multiplier `sc`,
and the weight is `d*sc * (q - 32)`. Repacked, a panel streams per 8
values of K one 32-bit word of low nibbles per column (as Q4_K's codes),
per 16 values one word of high bit pairs and one byte of `sc`, and per
super-block `d` as float32: 6.625 bits per weight against the file's
6.5625.

As in `panel_q4k_linear`, the codes meet activations rounded to int8 on a
scale per 32 values, four bytes per 32-bit lane (`byte_dot`: VNNI's
`vpdpbusd`, AVX2's `pmaddubsw`, where 63 * 127 * 2 stays inside its int16
pairs, ARM's `sdot`, or a portable form). The
offset of 32 is taken out in integers: each 16 values' integer dot starts
from `-32 * sum(x8)` over them, so per 16 values of K a row pays one
convert and one fused multiply-add: `xscale * d*sc * (sum(q * x8) -
32 * sum(x8))`, float math on the dequantized matrix and the rounded x.
"""

from std.math import fma, round
from std.memory import alloc, bitcast
from std.runtime import parallelism_level
from std.utils import StaticTuple

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext

from .byte_dot import dot_small_codes
from .panels import F32, PANEL, SIMD_WIDTH, Vec, check_shapes, store_rows

comptime Q6K_SUPER = 256
"""Values of K per super-block (`d`): ggml's `QK_K`."""
comptime Q6K_GROUP = 16
"""Values of K per multiplier `sc`: one word of high bit pairs."""
comptime X_BLOCK = 32
"""Values of x per activation scale."""
comptime LOW_PER_WORD = 8
"""Low nibbles per 32-bit word: byte `b` holds those of K offsets `b` and
`4 + b`, so masking gives four K-consecutive codes, as `vpdpbusd` pairs
them with four bytes of x."""
comptime Q6K_ROWS = 8 if SIMD_WIDTH >= 16 else 1
"""Rows per register block: a float accumulator per row and register of
the panel (16 of AVX-512's 32 registers at 8 rows), beside a group's
decoded codes. AVX2's 16 registers hold one row; NEON keeps one too (8
accumulators of 4 lanes per row: two rows might fit its 32, untried)."""
comptime CHUNKS = PANEL // SIMD_WIDTH
"""Registers per panel row."""
comptime DECODED = CHUNKS if SIMD_WIDTH >= 16 else 1
"""Registers of the panel row whose codes are decoded together, so that
each row's broadcasts of x serve them all: both of AVX-512's (8 code
vectors; measured, engine batch 32 1581-1625 tok/s against 1298-1406
decoding one at a time), one of AVX2's (4 would not fit its 16)."""
comptime I32s = SIMD[DType.int32, SIMD_WIDTH]
comptime F32s = SIMD[F32, SIMD_WIDTH]
comptime NIBBLES = I32s(0x0F0F0F0F)
comptime HIGH_PAIRS = I32s(0x30303030)


def quantize_rows(
    x: Pointer[Float32, MutAnyOrigin],
    x8: Pointer[Int32, MutAnyOrigin],
    x_scale: Pointer[Float32, MutAnyOrigin],
    x_offset: Pointer[Int32, MutAnyOrigin],
    m_dim: Int,
    k_dim: Int,
):
    """Each 32 values of x -> int8 (packed four per int32 in `x8`) and their
    scale `amax / 127`; per 16 of them `-32 * sum(x8)`, where each group's
    integer dot starts."""
    for block in range(m_dim * (k_dim // X_BLOCK)):
        var v = x.unsafe_load[width=X_BLOCK](block * X_BLOCK)
        var amax = abs(v).reduce_max()
        var inv = Float32(127.0) / amax if amax > 0 else Float32(0.0)
        var q = round(v * inv).cast[DType.int8]()
        x8.unsafe_store(block * (X_BLOCK // 4), bitcast[DType.int32, X_BLOCK // 4](q))
        x_scale.unsafe_store(block, amax / Float32(127.0))
        var wide = q.cast[DType.int32]()
        x_offset.unsafe_store(2 * block, -32 * wide.slice[Q6K_GROUP, offset=0]().reduce_add())
        x_offset.unsafe_store(
            2 * block + 1, -32 * wide.slice[Q6K_GROUP, offset=Q6K_GROUP]().reduce_add()
        )


@always_inline
def q6k_row_block[
    rows: Int, act: Int
](
    x8: Pointer[Int32, MutAnyOrigin],
    x_scale: Pointer[Float32, MutAnyOrigin],
    x_offset: Pointer[Int32, MutAnyOrigin],
    low: Pointer[UInt32, MutAnyOrigin],
    high: Pointer[UInt32, MutAnyOrigin],
    multipliers: Pointer[Int8, MutAnyOrigin],
    scales: Pointer[Float32, MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    var acc = StaticTuple[F32s, rows * CHUNKS](fill=F32s(0))
    var groups = k_dim // Q6K_GROUP
    var x_words = k_dim // 4  # per row of x8
    var lo_panel = low.unsafe_offset(panel * (k_dim // LOW_PER_WORD) * PANEL)
    var hi_panel = high.unsafe_offset(panel * groups * PANEL)
    var sc_panel = multipliers.unsafe_offset(panel * groups * PANEL)
    var d_panel = scales.unsafe_offset(panel * (k_dim // Q6K_SUPER) * PANEL)
    for group in range(groups):
        var sup = group // (Q6K_SUPER // Q6K_GROUP)
        comptime for first in range(0, CHUNKS, DECODED):
            # Full 6-bit codes of K offsets 0-3, 4-7, 8-11 and 12-15.
            var q = StaticTuple[I32s, 4 * DECODED](fill=I32s(0))
            var d_sc = StaticTuple[F32s, DECODED](fill=F32s(0))
            comptime for c in range(DECODED):
                var lane = (first + c) * SIMD_WIDTH
                var w0 = bitcast[DType.int32, SIMD_WIDTH](
                    lo_panel.unsafe_load[width=SIMD_WIDTH]((2 * group) * PANEL + lane)
                )
                var w1 = bitcast[DType.int32, SIMD_WIDTH](
                    lo_panel.unsafe_load[width=SIMD_WIDTH]((2 * group + 1) * PANEL + lane)
                )
                var h = bitcast[DType.int32, SIMD_WIDTH](
                    hi_panel.unsafe_load[width=SIMD_WIDTH](group * PANEL + lane)
                )
                q[4 * c] = (w0 & NIBBLES) | ((h << 4) & HIGH_PAIRS)
                q[4 * c + 1] = ((w0 >> 4) & NIBBLES) | ((h << 2) & HIGH_PAIRS)
                q[4 * c + 2] = (w1 & NIBBLES) | (h & HIGH_PAIRS)
                q[4 * c + 3] = ((w1 >> 4) & NIBBLES) | ((h >> 2) & HIGH_PAIRS)
                d_sc[c] = d_panel.unsafe_load[width=SIMD_WIDTH](sup * PANEL + lane) * (
                    sc_panel.unsafe_load[width=SIMD_WIDTH](group * PANEL + lane).cast[F32]()
                )
            comptime for r in range(rows):
                var x_at = (row0 + r) * x_words + 4 * group
                var x0 = I32s(x8.unsafe_load(x_at))
                var x1 = I32s(x8.unsafe_load(x_at + 1))
                var x2 = I32s(x8.unsafe_load(x_at + 2))
                var x3 = I32s(x8.unsafe_load(x_at + 3))
                var offset = I32s(x_offset.unsafe_load((row0 + r) * groups + group))
                var xs = x_scale.unsafe_load((row0 + r) * (k_dim // X_BLOCK) + group // 2)
                comptime for c in range(DECODED):
                    var dot = dot_small_codes(offset, q[4 * c], x0)
                    dot = dot_small_codes(dot, q[4 * c + 1], x1)
                    dot = dot_small_codes(dot, q[4 * c + 2], x2)
                    dot = dot_small_codes(dot, q[4 * c + 3], x3)
                    var i = r * CHUNKS + first + c
                    acc[i] = fma(d_sc[c] * xs, dot.cast[F32](), acc[i])

    var out = StaticTuple[Vec, rows](fill=Vec(0))
    comptime for r in range(rows):
        comptime for c in range(CHUNKS):
            out[r] = out[r].insert[offset=c * SIMD_WIDTH](acc[r * CHUNKS + c])
    store_rows[rows, act, True](out, bias, y, row0, panel, n_dim)


def q6k_panel_matmul[
    act: Int
](
    x: Pointer[Float32, MutAnyOrigin],
    low: Pointer[UInt32, MutAnyOrigin],
    high: Pointer[UInt32, MutAnyOrigin],
    multipliers: Pointer[Int8, MutAnyOrigin],
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
    var x_offset_buf = alloc[Int32](2 * blocks)
    var x8 = x8_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_scale = x_scale_buf.unsafe_origin_cast[MutAnyOrigin]()
    var x_offset = x_offset_buf.unsafe_origin_cast[MutAnyOrigin]()
    quantize_rows(x, x8, x_scale, x_offset, m_dim, k_dim)

    def work(worker: Int) {imm x8, imm x_scale, imm x_offset, imm low, imm high, imm multipliers, imm scales, imm bias, imm y, imm m_dim, imm k_dim, imm n_dim, imm panels, imm workers}:
        for panel in range(worker * panels // workers, (worker + 1) * panels // workers):
            var row0 = 0
            while m_dim - row0 >= Q6K_ROWS:
                q6k_row_block[Q6K_ROWS, act](x8, x_scale, x_offset, low, high, multipliers, scales, bias, y, row0, panel, k_dim, n_dim)
                row0 += Q6K_ROWS
            var left = m_dim - row0
            comptime for rows in range(1, Q6K_ROWS):
                if left == rows:
                    q6k_row_block[rows, act](x8, x_scale, x_offset, low, high, multipliers, scales, bias, y, row0, panel, k_dim, n_dim)

    sync_parallelize(work, workers)
    x8_buf.unsafe_free()
    x_scale_buf.unsafe_free()
    x_offset_buf.unsafe_free()


@extensibility.register("panel_q6k_linear")
struct PanelQ6KLinear[activation: Int]:
    """`activation` is one of the `ACT_*` codes of `panels`."""

    @staticmethod
    def execute[target: StaticString](
        y: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        low: InputTensor[dtype=DType.uint32, rank=3, ...],
        high: InputTensor[dtype=DType.uint32, rank=3, ...],
        multipliers: InputTensor[dtype=DType.int8, rank=3, ...],
        scales: InputTensor[dtype=F32, rank=3, ...],
        bias: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("panel_q6k_linear runs on CPU only")
        var k_dim = x.dim_size(1)
        check_shapes(
            "panel_q6k_linear",
            y.dim_size(0), y.dim_size(1), y.stride_length(0), y.stride_length(1),
            x.dim_size(0), k_dim, x.stride_length(0), x.stride_length(1),
            low.dim_size(0), low.dim_size(1) * LOW_PER_WORD, low.dim_size(2),
        )
        if k_dim % Q6K_SUPER != 0:
            raise Error("panel_q6k_linear: K is not a multiple of 256")
        var panels = low.dim_size(0)
        var groups = k_dim // Q6K_GROUP
        if (
            high.dim_size(0) != panels
            or high.dim_size(1) != groups
            or high.dim_size(2) != PANEL
            or multipliers.dim_size(0) != panels
            or multipliers.dim_size(1) != groups
            or multipliers.dim_size(2) != PANEL
            or scales.dim_size(0) != panels
            or scales.dim_size(1) != k_dim // Q6K_SUPER
            or scales.dim_size(2) != PANEL
        ):
            raise Error("panel_q6k_linear: high bits or scales do not match the panels")
        if bias.dim_size(0) != y.dim_size(1):
            raise Error("panel_q6k_linear: bias length is not y's width")
        q6k_panel_matmul[Self.activation](
            x.unsafe_ptr(), low.unsafe_ptr(), high.unsafe_ptr(),
            multipliers.unsafe_ptr(), scales.unsafe_ptr(), bias.unsafe_ptr(),
            y.unsafe_ptr(), x.dim_size(0), k_dim, y.dim_size(1),
        )
