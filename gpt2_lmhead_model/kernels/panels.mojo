"""Weight-streaming matmul over weights packed in column panels.

A decode step multiplies a few rows of activations by every weight matrix
once, so its speed is the speed at which the weights stream from memory.
The weights are packed once at load as panels `[ceil(N / PANEL), K, PANEL]`
(zero-padded past N): each panel is one contiguous run of memory, read
front to back while `MR` rows of `x` accumulate in registers. Panels are
split evenly over the runtime's worker threads.

The panels may hold float32 or half-width weights (bfloat16, float16: a
GGUF file's F16/BF16 matrices), which stream half the bytes; each is
widened to float32 in registers, exactly, and the math is float32's.
"""

from std.runtime import parallelism_level
from std.math import erf, fma, round, sqrt, tanh
from std.memory import bitcast
from std.sys.info import CompilationTarget, simd_width_of
from std.utils import StaticTuple

from max.algorithm import sync_parallelize

comptime F32 = DType.float32
comptime BF16 = DType.bfloat16
comptime F16 = DType.float16
comptime PANEL = 32
"""Columns per panel; `panel_matmul.PANEL` on the Python side packs to it."""
comptime SIMD_WIDTH = simd_width_of[F32]()
"""The float32 lanes of one vector register on the compile target (16 with
AVX-512, 8 with AVX2, 4 with NEON or SSE): a panel row is `CHUNKS`
registers."""
comptime CHUNKS = PANEL // SIMD_WIDTH
"""Registers per panel row."""
comptime F32s = SIMD[F32, SIMD_WIDTH]
comptime VECTOR_REGISTERS = 32 if SIMD_WIDTH >= 16 or CompilationTarget.has_neon() else 16
"""The vector register file: 32 with AVX-512 and on AArch64 (NEON's
32 128-bit registers), 16 with AVX2 or SSE."""
comptime CHUNKED_ACCUMULATORS = CompilationTarget.has_neon()
"""NEON's multiply-adds take no memory operand, so the panel row streams
through registers two at a time next to one accumulator per row and
register: written that way, LLVM keeps every accumulator in place, where
whole-panel-row accumulators left register copies and stack spills in the
K loop (read in the neoverse-n1 assembly). x86's form is kept as measured."""
comptime MAX_ROWS = 8 if SIMD_WIDTH >= 16 else (VECTOR_REGISTERS - 4) // CHUNKS
"""Rows of `x` per register block, `MAX_ROWS * CHUNKS` accumulators, with
4 registers or more left for the panel row (streamed, or a memory operand
on x86) and the broadcasts of x: 16 of AVX-512's 32 registers (8 rows,
measured best), 12 of AVX2's 16 (3 rows), 24 of NEON's 32 (3 rows: the K
loop of the neoverse-n1 build holds 24 accumulators, 2 panel registers and
3 broadcasts, no spill), 8 of SSE's 16 (1 row)."""

comptime ACT_NONE = 0
comptime ACT_GELU = 1
"""`gelu`: x * Phi(x), with the error function."""
comptime ACT_GELU_TANH = 2
"""`gelu_new` and its aliases: GPT-2's tanh approximation."""

comptime Vec = SIMD[F32, PANEL]


@always_inline
def activate[act: Int](v: Vec) -> Vec:
    comptime if act == ACT_GELU:
        return 0.5 * v * (1.0 + erf(v * Float32(0.7071067811865476)))
    elif act == ACT_GELU_TANH:
        var inner = Float32(0.7978845608028654) * (v + Float32(0.044715) * v * v * v)
        return 0.5 * v * (1.0 + tanh(inner))
    else:
        return v


@always_inline
def store_rows[
    rows: Int, act: Int, has_bias: Bool
](
    acc: StaticTuple[Vec, rows],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    n_dim: Int,
):
    """The end of every panel kernel: bias, activation and a store clipped
    to N, for `rows` rows of y accumulated over one panel."""
    var col0 = panel * PANEL
    var width = min(PANEL, n_dim - col0)
    var b = Vec(0)
    comptime if has_bias:
        if width == PANEL:
            b = bias.unsafe_load[width=PANEL](col0)
        else:
            for j in range(width):
                b[j] = bias.unsafe_load(col0 + j)
    comptime for r in range(rows):
        var out = activate[act](acc[r] + b)
        var y_row = (row0 + r) * n_dim + col0
        if width == PANEL:
            y.unsafe_store(y_row, out)
        else:
            for j in range(width):
                y.unsafe_store(y_row + j, out[j])


comptime X_BLOCK = 32
"""Values of a row of x per int8 scale, in the kernels that meet integer
weight codes with integer activations (`panel_q4k_linear`,
`panel_q8_linear`)."""


def quantize_rows(
    x: Pointer[Float32, MutAnyOrigin],
    x8: Pointer[Int32, MutAnyOrigin],
    x_scale: Pointer[Float32, MutAnyOrigin],
    x_sum: Pointer[Float32, MutAnyOrigin],
    m_dim: Int,
    k_dim: Int,
):
    """Each 32 values of x -> int8 (packed four per int32 in `x8`), their
    scale `amax / 127` and the sum of the rounded values (`x8` times the
    scale)."""
    for block in range(m_dim * (k_dim // X_BLOCK)):
        var v = x.unsafe_load[width=X_BLOCK](block * X_BLOCK)
        var amax = abs(v).reduce_max()
        var inv = Float32(127.0) / amax if amax > 0 else Float32(0.0)
        var q = round(v * inv).cast[DType.int8]()
        x8.unsafe_store(block * (X_BLOCK // 4), bitcast[DType.int32, X_BLOCK // 4](q))
        var scale = amax / Float32(127.0)
        x_scale.unsafe_store(block, scale)
        x_sum.unsafe_store(block, q.cast[F32]().reduce_add() * scale)


def is_panel_dtype[wdt: DType]() -> Bool:
    """The weight types `panel_matmul` streams."""
    return wdt == F32 or wdt == BF16 or wdt == F16


@always_inline
def row_block[
    rows: Int, act: Int, has_bias: Bool, wdt: DType
](
    x: Pointer[Float32, MutAnyOrigin],
    w: Pointer[Scalar[wdt], MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    row0: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    """`rows` rows of y over one panel: accumulate over K, then bias,
    activation and a store clipped to N."""
    var w_panel = w.unsafe_offset(panel * k_dim * PANEL)
    var x_rows = x.unsafe_offset(row0 * k_dim)
    comptime if CHUNKED_ACCUMULATORS:
        var acc = StaticTuple[F32s, rows * CHUNKS](fill=F32s(0))
        for k in range(k_dim):
            var xs = StaticTuple[F32s, rows](fill=F32s(0))
            comptime for r in range(rows):
                xs[r] = F32s(x_rows.unsafe_load(r * k_dim + k))
            comptime for c in range(CHUNKS):
                var w_chunk = w_panel.unsafe_load[width=SIMD_WIDTH](k * PANEL + c * SIMD_WIDTH).cast[F32]()
                comptime for r in range(rows):
                    acc[r * CHUNKS + c] = fma(xs[r], w_chunk, acc[r * CHUNKS + c])
        var out = StaticTuple[Vec, rows](fill=Vec(0))
        comptime for r in range(rows):
            comptime for c in range(CHUNKS):
                out[r] = out[r].insert[offset=c * SIMD_WIDTH](acc[r * CHUNKS + c])
        store_rows[rows, act, has_bias](out, bias, y, row0, panel, n_dim)
    else:
        var acc = StaticTuple[Vec, rows](fill=Vec(0))
        for k in range(k_dim):
            var w_row = w_panel.unsafe_load[width=PANEL](k * PANEL).cast[F32]()
            comptime for r in range(rows):
                acc[r] = fma(Vec(x_rows.unsafe_load(r * k_dim + k)), w_row, acc[r])
        store_rows[rows, act, has_bias](acc, bias, y, row0, panel, n_dim)


@always_inline
def panel_rows[
    act: Int, has_bias: Bool, wdt: DType
](
    x: Pointer[Float32, MutAnyOrigin],
    w: Pointer[Scalar[wdt], MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    m_dim: Int,
    panel: Int,
    k_dim: Int,
    n_dim: Int,
):
    """Every row of y over one panel, `MAX_ROWS` at a time; the panel stays
    in cache between row blocks."""
    var row0 = 0
    while m_dim - row0 >= MAX_ROWS:
        row_block[MAX_ROWS, act, has_bias, wdt](x, w, bias, y, row0, panel, k_dim, n_dim)
        row0 += MAX_ROWS
    var left = m_dim - row0
    comptime for rows in range(1, MAX_ROWS):
        if left == rows:
            row_block[rows, act, has_bias, wdt](x, w, bias, y, row0, panel, k_dim, n_dim)


def panel_matmul[
    act: Int, has_bias: Bool, wdt: DType = F32
](
    x: Pointer[Float32, MutAnyOrigin],
    w: Pointer[Scalar[wdt], MutAnyOrigin],
    bias: Pointer[Float32, MutAnyOrigin],
    y: Pointer[Float32, MutAnyOrigin],
    m_dim: Int,
    k_dim: Int,
    n_dim: Int,
):
    """Computes y[m_dim, n_dim] = act(x[m_dim, k_dim] @ W + bias), W packed
    in panels of `wdt` (`is_panel_dtype`)."""
    var panels = (n_dim + PANEL - 1) // PANEL
    var workers = min(parallelism_level(), panels)
    if m_dim == 0 or workers <= 0:
        return

    def work(worker: Int) {imm x, imm w, imm bias, imm y, imm m_dim, imm k_dim, imm n_dim, imm panels, imm workers}:
        var first = worker * panels // workers
        var last = (worker + 1) * panels // workers
        for panel in range(first, last):
            panel_rows[act, has_bias, wdt](x, w, bias, y, m_dim, panel, k_dim, n_dim)

    sync_parallelize(work, workers)


def check_shapes(
    op: StaticString,
    y_rows: Int,
    y_cols: Int,
    y_row_stride: Int,
    y_col_stride: Int,
    x_rows: Int,
    x_cols: Int,
    x_row_stride: Int,
    x_col_stride: Int,
    w_panels: Int,
    w_k: Int,
    w_panel: Int,
) raises:
    """Refuses shapes or strides the pointer arithmetic would misread."""
    if x_col_stride != 1 or x_row_stride != x_cols:
        raise Error(op, ": x must be row-major contiguous")
    if y_col_stride != 1 or y_row_stride != y_cols:
        raise Error(op, ": y must be row-major contiguous")
    if y_rows != x_rows:
        raise Error(op, ": x has ", x_rows, " rows, y has ", y_rows)
    if w_panel != PANEL or w_k != x_cols:
        raise Error(op, ": packed weight [", w_panels, ", ", w_k, ", ", w_panel, "] does not fit x of width ", x_cols)
    if w_panels != (y_cols + PANEL - 1) // PANEL:
        raise Error(op, ": packed weight has ", w_panels, " panels, y of width ", y_cols, " needs ", (y_cols + PANEL - 1) // PANEL)
