# Built by tests/test_kernel_targets.py for one CPU target, then run: the
# panel kernel against a scalar loop, on integer-valued operands (exact in
# float32), with row and column counts that leave partial register blocks
# and a partial panel on every vector width.
from std.memory import alloc

from kernels.panels import ACT_NONE, MAX_ROWS, PANEL, SIMD_WIDTH, panel_matmul


def weight(k: Int, n: Int) -> Float32:
    return Float32((k * 5 + n * 3) % 11) - 5.0


def main() raises:
    print("simd_width", SIMD_WIDTH, "max_rows", MAX_ROWS)
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
