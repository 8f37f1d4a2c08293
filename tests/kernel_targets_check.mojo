# Built by tests/test_kernel_targets.py for one CPU target, then run: the
# panel kernel against a scalar loop, on integer-valued operands (exact in
# float32), with row and column counts that leave partial register blocks
# and a partial panel on every vector width.
from std.memory import alloc

from kernels.panel_q8_linear import Q8_BLOCK, Q8_ROWS, q8_panel_matmul
from kernels.panels import ACT_NONE, MAX_ROWS, PANEL, SIMD_WIDTH, panel_matmul


def weight(k: Int, n: Int) -> Float32:
    return Float32((k * 5 + n * 3) % 11) - 5.0


def check_q8() raises:
    """`q8_panel_matmul`: int8 weights times power-of-two scales, exact."""
    comptime M = 19
    comptime K = 2 * Q8_BLOCK
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    var x = alloc[Float32](M * K)
    var q = alloc[Int8](P * K * PANEL)
    var s = alloc[Float32](P * (K // Q8_BLOCK) * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        x[i] = Float32((i * 7) % 13) - 6.0
    for i in range(P * K * PANEL):
        q[i] = 0
    for i in range(P * (K // Q8_BLOCK) * PANEL):
        s[i] = 0.0
    for n in range(N):
        b[n] = Float32(n % 4)
        for k in range(K):
            q[(n // PANEL) * K * PANEL + k * PANEL + n % PANEL] = Int8(Int(weight(k, n)) * 20)
        for blk in range(K // Q8_BLOCK):
            s[(n // PANEL) * (K // Q8_BLOCK) * PANEL + blk * PANEL + n % PANEL] = Float32(1 << (blk + n % 3)) / 64.0
    for m_dim in range(1, M + 1):
        q8_panel_matmul[ACT_NONE](
            x.unsafe_origin_cast[MutAnyOrigin](),
            q.unsafe_origin_cast[MutAnyOrigin](),
            s.unsafe_origin_cast[MutAnyOrigin](),
            b.unsafe_origin_cast[MutAnyOrigin](),
            y.unsafe_origin_cast[MutAnyOrigin](),
            m_dim,
            K,
            N,
        )
        var worst: Float32 = 0.0
        for m in range(m_dim):
            for n in range(N):
                var want = b[n]
                for k in range(K):
                    var scale = Float32(1 << (k // Q8_BLOCK + n % 3)) / 64.0
                    want += x[m * K + k] * weight(k, n) * 20.0 * scale
                worst = max(worst, abs(y[m * N + n] - want))
        print("q8 rows", m_dim, "max_abs_error", worst)


def main() raises:
    print("simd_width", SIMD_WIDTH, "max_rows", MAX_ROWS, "q8_rows", Q8_ROWS)
    comptime M = 19
    comptime K = 37
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    var x = alloc[Float32](M * K)
    var w = alloc[Float32](P * K * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        x[i] = Float32((i * 7) % 13) - 6.0
    for i in range(P * K * PANEL):
        w[i] = 0.0
    for k in range(K):
        for n in range(N):
            w[(n // PANEL) * K * PANEL + k * PANEL + n % PANEL] = weight(k, n)
    for n in range(N):
        b[n] = Float32(n % 4)
    for m_dim in range(1, M + 1):
        panel_matmul[ACT_NONE, True](
            x.unsafe_origin_cast[MutAnyOrigin](),
            w.unsafe_origin_cast[MutAnyOrigin](),
            b.unsafe_origin_cast[MutAnyOrigin](),
            y.unsafe_origin_cast[MutAnyOrigin](),
            m_dim,
            K,
            N,
        )
        var worst: Float32 = 0.0
        for m in range(m_dim):
            for n in range(N):
                var want = b[n]
                for k in range(K):
                    want += x[m * K + k] * weight(k, n)
                worst = max(worst, abs(y[m * N + n] - want))
        print("rows", m_dim, "max_abs_error", worst)
    check_q8()
