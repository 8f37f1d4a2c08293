# Built by tests/kernels/test_targets.py for one CPU target, then run: the
# panel kernel against a scalar loop, on integer-valued operands (exact in
# float32), with row and column counts that leave partial register blocks
# and a partial panel on every vector width.
from std.memory import alloc

from kernels.byte_dot import route_name
from kernels.panel_q4k_linear import CODES_PER_WORD, Q4K_ROWS, Q4K_SUB, Q4K_SUPER, q4k_panel_matmul
from kernels.panel_q6k_linear import LOW_PER_WORD, Q6K_GROUP, Q6K_ROWS, Q6K_SUPER, q6k_panel_matmul
from kernels.panel_q8_linear import Q8_BLOCK, Q8_CODE_OFFSET, Q8_CODES_PER_WORD, Q8_ROWS, q8_panel_matmul
from kernels.panels import ACT_NONE, MAX_ROWS, PANEL, SIMD_WIDTH, panel_matmul


def weight(k: Int, n: Int) -> Float32:
    return Float32((k * 5 + n * 3) % 11) - 5.0


def q8_code(k: Int, n: Int) -> Int:
    """Every int8 value, -128 and 127 included, across K and N."""
    return (k * 37 + n * 11) % 256 - 128


def check_q8() raises:
    """`q8_panel_matmul`: int8 codes over their whole range (stored plus
    128: the unsigned byte's whole range), power-of-two scales, and integer
    x over -127..127 whose every 32 values peak at 127, so its rounding to
    int8 is exact; adjacent large codes and x overflow a 16-bit pair sum,
    which a saturating byte dot product would clip."""
    comptime M = 19
    comptime K = 2 * Q8_BLOCK
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    comptime WORDS = K // Q8_CODES_PER_WORD
    var x = alloc[Float32](M * K)
    var c = alloc[UInt32](P * WORDS * PANEL)
    var s = alloc[Float32](P * (K // Q8_BLOCK) * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        var sign = Float32(1.0) if (i // Q8_BLOCK) % 2 == 0 else Float32(-1.0)
        x[i] = sign * 127.0 if i % Q8_BLOCK == 0 else Float32((i * 37) % 255) - 127.0
    for i in range(P * WORDS * PANEL):
        c[i] = 0
    for i in range(P * (K // Q8_BLOCK) * PANEL):
        s[i] = 0.0
    for n in range(N):
        b[n] = Float32(n % 4)
        for k in range(K):
            var at = ((n // PANEL) * WORDS + k // Q8_CODES_PER_WORD) * PANEL + n % PANEL
            var stored = UInt32(q8_code(k, n) + Q8_CODE_OFFSET)
            c[at] = c[at] | (stored << UInt32(8 * (k % Q8_CODES_PER_WORD)))
        for blk in range(K // Q8_BLOCK):
            s[(n // PANEL) * (K // Q8_BLOCK) * PANEL + blk * PANEL + n % PANEL] = Float32(1 << (blk + n % 3)) / 64.0
    for m_dim in range(1, M + 1):
        q8_panel_matmul[ACT_NONE](
            x.unsafe_origin_cast[MutAnyOrigin](),
            c.unsafe_origin_cast[MutAnyOrigin](),
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
                    want += x[m * K + k] * Float32(q8_code(k, n)) * scale
                worst = max(worst, abs(y[m * N + n] - want))
        print("q8 rows", m_dim, "max_abs_error", worst)


def q4k_code(k: Int, n: Int) -> Int:
    return (k * 5 + n * 3) % 16


def q4k_weight(k: Int, n: Int) -> Float32:
    """`d*sc * code - dmin*m` with power-of-two `d`, `dmin` and small `sc`,
    `m`: every product and partial sum below is exact in float32."""
    var sup = k // Q4K_SUPER
    var sub = k // Q4K_SUB
    var d = Float32(1.0) / Float32(1 << (sup + n % 3))
    var dmin = Float32(1.0) / Float32(1 << (n % 2 + 1))
    return d * Float32((sub + n) % 4 + 1) * Float32(q4k_code(k, n)) - dmin * Float32((sub + 2 * n) % 3)


def check_q4k() raises:
    """`q4k_panel_matmul`: 4-bit codes, 6-bit multipliers, fp32 scales, and
    x whose every 32 values peak at 127, so its rounding to int8 is exact."""
    comptime M = 19
    comptime K = 2 * Q4K_SUPER
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    comptime WORDS = K // CODES_PER_WORD
    comptime SUBS = K // Q4K_SUB
    comptime SUPERS = K // Q4K_SUPER
    var x = alloc[Float32](M * K)
    var c = alloc[UInt32](P * WORDS * PANEL)
    var s = alloc[UInt8](P * SUBS * 2 * PANEL)
    var d = alloc[Float32](P * SUPERS * 2 * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        x[i] = Float32(127.0) if i % Q4K_SUB == 0 else Float32((i * 7) % 13) - 6.0
    for i in range(P * WORDS * PANEL):
        c[i] = 0
    for i in range(P * SUBS * 2 * PANEL):
        s[i] = 0
    for i in range(P * SUPERS * 2 * PANEL):
        d[i] = 0.0
    for n in range(N):
        var p = n // PANEL
        var lane = n % PANEL
        b[n] = Float32(n % 4)
        for k in range(K):
            var at = (p * WORDS + k // CODES_PER_WORD) * PANEL + lane
            # Byte b of a word: K offset b in the low nibble, 4 + b in the high.
            var j = k % CODES_PER_WORD
            var shift = 8 * (j % 4) + 4 * (j // 4)
            c[at] = c[at] | (UInt32(q4k_code(k, n)) << UInt32(shift))
        for sub in range(SUBS):
            s[((p * SUBS + sub) * 2) * PANEL + lane] = UInt8((sub + n) % 4 + 1)
            s[((p * SUBS + sub) * 2 + 1) * PANEL + lane] = UInt8((sub + 2 * n) % 3)
        for sup in range(SUPERS):
            d[((p * SUPERS + sup) * 2) * PANEL + lane] = Float32(1.0) / Float32(1 << (sup + n % 3))
            d[((p * SUPERS + sup) * 2 + 1) * PANEL + lane] = Float32(1.0) / Float32(1 << (n % 2 + 1))
    for m_dim in range(1, M + 1):
        q4k_panel_matmul[ACT_NONE](
            x.unsafe_origin_cast[MutAnyOrigin](),
            c.unsafe_origin_cast[MutAnyOrigin](),
            s.unsafe_origin_cast[MutAnyOrigin](),
            d.unsafe_origin_cast[MutAnyOrigin](),
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
                    want += x[m * K + k] * q4k_weight(k, n)
                worst = max(worst, abs(y[m * N + n] - want))
        print("q4k rows", m_dim, "max_abs_error", worst)


def q6k_code(k: Int, n: Int) -> Int:
    return (k * 5 + n * 3) % 64


def q6k_multiplier(group: Int, n: Int) -> Int:
    return (group + n) % 7 - 3


def q6k_scale(sup: Int, n: Int) -> Float32:
    return Float32(1.0) / Float32(1 << (sup + n % 2))


def check_q6k() raises:
    """`q6k_panel_matmul`: 6-bit codes split into low nibbles and high bit
    pairs, signed multipliers, power-of-two scales, and x whose every 32
    values peak at 127 (exact int8 rounding); every sum is exact."""
    comptime M = 19
    comptime K = 2 * Q6K_SUPER
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    comptime WORDS = K // LOW_PER_WORD
    comptime GROUPS = K // Q6K_GROUP
    comptime SUPERS = K // Q6K_SUPER
    var x = alloc[Float32](M * K)
    var lo = alloc[UInt32](P * WORDS * PANEL)
    var hi = alloc[UInt32](P * GROUPS * PANEL)
    var sc = alloc[Int8](P * GROUPS * PANEL)
    var d = alloc[Float32](P * SUPERS * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        x[i] = Float32(127.0) if i % 32 == 0 else Float32((i * 7) % 13) - 6.0
    for i in range(P * WORDS * PANEL):
        lo[i] = 0
    for i in range(P * GROUPS * PANEL):
        hi[i] = 0
        sc[i] = 0
    for i in range(P * SUPERS * PANEL):
        d[i] = 0.0
    for n in range(N):
        var p = n // PANEL
        var lane = n % PANEL
        b[n] = Float32(n % 4)
        for k in range(K):
            var code = q6k_code(k, n)
            # Low nibbles as Q4_K's codes: byte j % 4, nibble j // 4.
            var j = k % LOW_PER_WORD
            var at = (p * WORDS + k // LOW_PER_WORD) * PANEL + lane
            lo[at] = lo[at] | (UInt32(code % 16) << UInt32(8 * (j % 4) + 4 * (j // 4)))
            # High pairs: byte g % 4, bits 2 * (g // 4), g the offset in 16.
            var g = k % Q6K_GROUP
            var hat = (p * GROUPS + k // Q6K_GROUP) * PANEL + lane
            hi[hat] = hi[hat] | (UInt32(code // 16) << UInt32(8 * (g % 4) + 2 * (g // 4)))
        for group in range(GROUPS):
            sc[(p * GROUPS + group) * PANEL + lane] = Int8(q6k_multiplier(group, n))
        for sup in range(SUPERS):
            d[(p * SUPERS + sup) * PANEL + lane] = q6k_scale(sup, n)
    for m_dim in range(1, M + 1):
        q6k_panel_matmul[ACT_NONE](
            x.unsafe_origin_cast[MutAnyOrigin](),
            lo.unsafe_origin_cast[MutAnyOrigin](),
            hi.unsafe_origin_cast[MutAnyOrigin](),
            sc.unsafe_origin_cast[MutAnyOrigin](),
            d.unsafe_origin_cast[MutAnyOrigin](),
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
                    var w = q6k_scale(k // Q6K_SUPER, n) * Float32(q6k_multiplier(k // Q6K_GROUP, n))
                    want += x[m * K + k] * w * Float32(q6k_code(k, n) - 32)
                worst = max(worst, abs(y[m * N + n] - want))
        print("q6k rows", m_dim, "max_abs_error", worst)


def check_panels[wdt: DType](label: StaticString) raises:
    """`panel_matmul` over panels of `wdt`: the integer weights are exact in
    float32, bfloat16 and float16 alike, so every width must agree."""
    comptime M = 19
    comptime K = 37
    comptime N = 77
    comptime P = (N + PANEL - 1) // PANEL
    var x = alloc[Float32](M * K)
    var w = alloc[Scalar[wdt]](P * K * PANEL)
    var b = alloc[Float32](N)
    var y = alloc[Float32](M * N)
    for i in range(M * K):
        x[i] = Float32((i * 7) % 13) - 6.0
    for i in range(P * K * PANEL):
        w[i] = 0
    for k in range(K):
        for n in range(N):
            w[(n // PANEL) * K * PANEL + k * PANEL + n % PANEL] = weight(k, n).cast[wdt]()
    for n in range(N):
        b[n] = Float32(n % 4)
    for m_dim in range(1, M + 1):
        panel_matmul[ACT_NONE, True, wdt](
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
        print(label, "rows", m_dim, "max_abs_error", worst)


def main() raises:
    print("byte_dot", route_name())
    print("simd_width", SIMD_WIDTH, "max_rows", MAX_ROWS, "q8_rows", Q8_ROWS, "q4k_rows", Q4K_ROWS, "q6k_rows", Q6K_ROWS)
    check_panels[DType.float32]("f32")
    check_panels[DType.bfloat16]("bf16")
    check_panels[DType.float16]("f16")
    check_q8()
    check_q4k()
    check_q6k()
