"""The panel kernels built for each CPU family MAX runs on, and checked.

MAX compiles custom kernels for the host CPU, so the NumPy tests exercise
one target only. Here `mojo build` compiles `kernel_targets_check.mojo`
(every panel kernel against a scalar loop, on integer-valued operands: the
float32, bfloat16, float16, Q8_0, Q4_K and Q6_K panels, rows 1 to 19) for:

- x86-64, run natively: AVX2 only (`x86-64-v3`), AVX-512 without VNNI
  (`skylake-avx512`, where the host has AVX-512), the host, and baseline
  x86-64 without SSSE3 (the portable byte dot product);
- x86 `alderlake` (AVX-VNNI, no AVX-512): built, and its 256-bit VEX
  `vpdpbusd` checked in the binary; run only on a host with AVX-VNNI;
- aarch64 Linux (`neoverse-n1`, `neoverse-v2`: `sdot`; `generic` ARMv8.0:
  the portable route), linked against an aarch64 sysroot
  (`tests/kernels/arm_sysroot.py`) and run under QEMU's user-mode emulation;
- Apple silicon (`arm64-apple-macosx`, `apple-m1`): compiled only, `sdot`
  checked in the assembly.

Each run also reports which byte dot product route (`kernels/byte_dot.mojo`)
the target compiled, and the test asserts the one that target must take.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import max
import pytest

from gpt2_lmhead_model.kernels import KERNELS_DIR
from tests.kernels.arm_sysroot import ArmSysroot, prepare

MODULAR = Path(next(iter(max.__path__))).resolve().parent / "modular"
LIB = MODULAR / "lib"
CHECK = Path(__file__).with_name("kernel_targets_check.mojo")
CPUINFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
AVX512 = "avx512f" in CPUINFO
VNNI = "avx512_vnni" in CPUINFO or "avx_vnni" in CPUINFO
AVX_VNNI = re.search(r"\bavx_vnni\b", CPUINFO) is not None
AARCH64_LINUX = "aarch64-unknown-linux-gnu"

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="builds and emulates from an x86-64 host"
)


def mojo_env() -> dict[str, str]:
    return {
        **os.environ,
        "MODULAR_MOJO_MAX_COMPILERRT_PATH": str(LIB / "libKGENCompilerRTShared.so"),
        "MODULAR_MOJO_MAX_LLD_PATH": str(MODULAR / "bin" / "lld"),
        "MODULAR_MOJO_MAX_IMPORT_PATH": str(LIB / "mojo"),
        "MODULAR_MOJO_MAX_MGPRT_PATH": str(LIB / "libMGPRT.so"),
    }


def mojo_build(out: Path, *flags: str) -> None:
    """`mojo build` of the check for `flags`; a failure shows the compiler's
    last words (an LLVM instruction-selection abort among them)."""
    cmd = [str(MODULAR / "bin" / "mojo"), "build", "-I", str(LIB / "mojo")]
    cmd += ["-I", str(KERNELS_DIR.parent), *flags, str(CHECK), "-o", str(out)]
    done = subprocess.run(
        cmd, env=mojo_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"{' '.join(flags)}: build failed\n{done.stderr[-3000:]}"
    )


def build_native(tmp_path: Path, target_cpu: str | None) -> Path:
    exe = tmp_path / f"check-{target_cpu or 'host'}"
    flags = ["--target-cpu", target_cpu] if target_cpu else []
    for name in ("AsyncRTMojoBindings", "AsyncRTRuntimeGlobals", "MSupportGlobals"):
        flags += ["-Xlinker", f"-l{name}"]
    mojo_build(exe, *flags, "-Xlinker", f"-L{LIB}")
    return exe


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{cmd[0]} exited {done.returncode}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def run_native(exe: Path) -> str:
    return run([str(exe)], env={**os.environ, "LD_LIBRARY_PATH": str(LIB)})


def check_output(out: str, simd_width: int, route: str, max_rows: int) -> None:
    assert f"byte_dot {route}\n" in out, out
    assert f"simd_width {simd_width} max_rows {max_rows} " in out, out
    for kernel in ("f32 ", "bf16 ", "f16 ", "q8 ", "q4k ", "q6k "):
        errors = re.findall(rf"^{kernel}rows (\d+) max_abs_error (\S+)", out, re.M)
        assert [int(r) for r, _ in errors] == list(range(1, 20)), (kernel, out)
        assert all(float(e) == 0.0 for _, e in errors), (kernel, out)


def test_avx2_only_target(tmp_path):
    check_output(run_native(build_native(tmp_path, "x86-64-v3")), 8, "x86-pmaddubsw", 3)


@pytest.mark.skipif(not AVX512, reason="runs AVX-512 code")
def test_avx512_without_vnni_target(tmp_path):
    """Intel Xeons before Cascade Lake: 16 lanes, but the byte dot products
    of the integer kernels take the non-VNNI route."""
    check_output(
        run_native(build_native(tmp_path, "skylake-avx512")), 16, "x86-pmaddubsw", 8
    )


def test_host_target(tmp_path):
    route = "x86-vnni" if VNNI else "x86-pmaddubsw"
    width, rows = (16, 8) if AVX512 else (8, 3)
    check_output(run_native(build_native(tmp_path, None)), width, route, rows)


def test_x86_without_ssse3_target(tmp_path):
    """Baseline x86-64 (SSE2): no byte multiply-add, so the portable route,
    run natively; one float row per block (a panel row fills 8 of SSE's
    16 registers)."""
    check_output(run_native(build_native(tmp_path, "x86-64")), 4, "portable", 1)


def test_alderlake_target(tmp_path):
    """AVX-VNNI without AVX-512 (Alder Lake and later client cores): the
    256-bit VEX-encoded `vpdpbusd`, and no 512-bit register anywhere."""
    exe = build_native(tmp_path, "alderlake")
    code = run(["objdump", "-d", "--no-show-raw-insn", str(exe)])
    assert re.search(r"\{vex\}\s*vpdpbusd\s+%ymm", code), (
        "no VEX vpdpbusd in the alderlake build"
    )
    assert "%zmm" not in code
    if AVX_VNNI:
        check_output(run_native(exe), 8, "x86-vnni", 3)


@pytest.fixture(scope="module")
def arm_sysroot() -> ArmSysroot:
    return prepare()


@pytest.mark.parametrize(
    ("target_cpu", "route"),
    [
        ("neoverse-n1", "neon-sdot"),
        ("neoverse-v2", "neon-sdot"),
        ("generic", "portable"),
    ],
)
def test_aarch64_linux_emulated(tmp_path, arm_sysroot, target_cpu, route):
    """Graviton 2 / Ampere Altra (N1), Graviton 4 / Grace (V2) and an
    ARMv8.0 core without dotprod, each built for aarch64 Linux, linked
    against the sysroot and run under QEMU."""
    obj = tmp_path / f"check-{target_cpu}.o"
    exe = tmp_path / f"check-{target_cpu}"
    mojo_build(
        obj,
        "--emit",
        "object",
        "--target-triple",
        AARCH64_LINUX,
        "--target-cpu",
        target_cpu,
    )
    run(arm_sysroot.link_command(MODULAR / "bin" / "lld", obj, exe))
    # NEON: 3 rows of 8 accumulators in 32 registers.
    check_output(run(arm_sysroot.run_command(exe)), 4, route, 3)


def test_apple_silicon_compiles(tmp_path):
    """macOS on Apple silicon cannot run here: the kernels compile for it,
    with `sdot` for the integer kernels and no x86 instruction."""
    asm = tmp_path / "check-apple-m1.s"
    mojo_build(
        asm,
        "--emit",
        "asm",
        "--target-triple",
        "arm64-apple-macosx",
        "--target-cpu",
        "apple-m1",
    )
    code = asm.read_text()
    # Apple's assembler syntax: `sdot.4s v0, v1, v2`.
    assert re.search(r"\bsdot\.4s\s+v\d+", code), "no sdot in the apple-m1 build"
    assert "pmadd" not in code and "vpdpbusd" not in code
