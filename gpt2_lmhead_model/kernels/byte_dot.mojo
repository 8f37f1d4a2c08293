"""Four-byte integer dot products per 32-bit lane, by the route the compile
target has: the inner step of the kernels that meet integer weight codes
with int8 activations (`panel_q4k_linear`, `panel_q6k_linear`,
`panel_q8_linear`).

The route is picked at compile time from the target's features, so one
kernel source builds for every CPU MAX runs on and the packed panels do not
depend on the target:

- `x86-vnni`: `vpdpbusd` (AVX-512 VNNI, or AVX-VNNI's 256-bit form);
- `x86-pmaddubsw`: SSSE3/AVX2/AVX-512BW's byte multiply-adds;
- `neon-sdot`: ARMv8.2's signed dot product (`dotprod`: Neoverse, Grace,
  Graviton 2 and later, Apple M-series);
- `portable`: plain widening multiplies and pairwise adds, for a target
  with none of these (ARMv8.0 cores, an x86 without SSSE3): slower, never
  an instruction-selection failure.

x86's instructions take the code bytes unsigned, ARM's `sdot` takes both
operands signed; `UNSIGNED_CODE_BIAS` says what each route subtracts from
an unsigned code byte, so a caller's offset arithmetic stays exact.
"""

from std.memory import bitcast
from std.sys import llvm_intrinsic
from std.sys.info import CompilationTarget, simd_width_of

from linalg.arch.cpu.vnni_intrinsics import dot_i8_to_i32_saturated_x86, dot_i8_to_i32_x86

comptime ROUTE_X86_VNNI = 0
comptime ROUTE_X86_PMADDUBSW = 1
comptime ROUTE_NEON_SDOT = 2
comptime ROUTE_PORTABLE = 3


def _route() -> Int:
    comptime if CompilationTarget.has_neon_int8_dotprod():
        return ROUTE_NEON_SDOT
    elif CompilationTarget.has_vnni():
        return ROUTE_X86_VNNI
    elif CompilationTarget._has_feature["ssse3"]() and (
        simd_width_of[DType.float32]() < 16 or CompilationTarget._has_feature["avx512bw"]()
    ):
        return ROUTE_X86_PMADDUBSW
    else:
        return ROUTE_PORTABLE


comptime BYTE_DOT_ROUTE = _route()
"""The compile target's route (`ROUTE_*`)."""


def route_name() -> StaticString:
    """The route's name, as `docs/CPUS.md` and the target checks spell it."""
    comptime if BYTE_DOT_ROUTE == ROUTE_NEON_SDOT:
        return "neon-sdot"
    elif BYTE_DOT_ROUTE == ROUTE_X86_VNNI:
        return "x86-vnni"
    elif BYTE_DOT_ROUTE == ROUTE_X86_PMADDUBSW:
        return "x86-pmaddubsw"
    else:
        return "portable"


comptime UNSIGNED_CODE_BIAS = 128 if BYTE_DOT_ROUTE == ROUTE_NEON_SDOT else 0
"""What `dot_unsigned_codes` subtracts from each code byte: `sdot` reads
bytes signed, so that route flips each code's top bit (`c - 128`); x86's
instructions and the portable route read the code bytes as they are."""


@always_inline
def _sdot[width: Int](
    acc: SIMD[DType.int32, width], a: SIMD[DType.int32, width], b: SIMD[DType.int32, width]
) -> SIMD[DType.int32, width]:
    """ARM's `sdot` on one 128-bit register: NEON's 4 lanes, the vector
    width of every AArch64 target (SVE cores included)."""
    comptime assert width == 4, "sdot: one 128-bit NEON register"
    return rebind[SIMD[DType.int32, width]](
        llvm_intrinsic["llvm.aarch64.neon.sdot.v4i32.v16i8", SIMD[DType.int32, 4]](
            rebind[SIMD[DType.int32, 4]](acc),
            bitcast[DType.int8, 16](rebind[SIMD[DType.int32, 4]](a)),
            bitcast[DType.int8, 16](rebind[SIMD[DType.int32, 4]](b)),
        )
    )


@always_inline
def _widening_dot[unsigned_a: Bool, width: Int](
    acc: SIMD[DType.int32, width], a: SIMD[DType.int32, width], b: SIMD[DType.int32, width]
) -> SIMD[DType.int32, width]:
    """Each byte widened to 32 bits, multiplied, and the four products of a
    lane added pairwise: exact for any byte values."""
    comptime a_type = DType.uint8 if unsigned_a else DType.int8
    var wide_a = bitcast[a_type, 4 * width](a).cast[DType.int32]()
    var products = wide_a * bitcast[DType.int8, 4 * width](b).cast[DType.int32]()
    var pairs = products.deinterleave()
    var pair_sums = pairs[0] + pairs[1]
    var quads = pair_sums.deinterleave()
    return acc + rebind[SIMD[DType.int32, width]](quads[0] + quads[1])


@always_inline
def dot_small_codes[width: Int](
    acc: SIMD[DType.int32, width], codes: SIMD[DType.int32, width], x: SIMD[DType.int32, width]
) -> SIMD[DType.int32, width]:
    """`acc` plus, per lane, the four products of `codes`' bytes (0..127:
    Q4_K's and Q6_K's codes) with `x`'s bytes (int8). Codes under 128 read
    the same signed or unsigned, and two products stay inside the int16
    pair sums of `pmaddubsw`."""
    comptime if BYTE_DOT_ROUTE == ROUTE_NEON_SDOT:
        return _sdot(acc, codes, x)
    elif BYTE_DOT_ROUTE == ROUTE_PORTABLE:
        return _widening_dot[False](acc, codes, x)
    else:
        return dot_i8_to_i32_saturated_x86(acc, codes, x)


@always_inline
def dot_unsigned_codes[width: Int](
    acc: SIMD[DType.int32, width], codes: SIMD[DType.int32, width], x: SIMD[DType.int32, width]
) -> SIMD[DType.int32, width]:
    """`acc` plus, per lane, the four products of `codes`' bytes (0..255)
    less `UNSIGNED_CODE_BIAS` with `x`'s bytes (int8), exactly: x86 without
    VNNI takes the unsaturated form, as 255 * 127 * 2 overflows int16."""
    comptime if BYTE_DOT_ROUTE == ROUTE_NEON_SDOT:
        var top_bits = bitcast[DType.int32, width](SIMD[DType.uint32, width](0x80808080))
        return _sdot(acc, codes ^ top_bits, x)
    elif BYTE_DOT_ROUTE == ROUTE_PORTABLE:
        return _widening_dot[True](acc, codes, x)
    else:
        return dot_i8_to_i32_x86(acc, codes, x)
