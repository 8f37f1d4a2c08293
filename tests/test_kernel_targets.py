"""The panel kernels built for each x86-64 vector width these machines have.

MAX compiles custom kernels for the host CPU, so the NumPy tests exercise
one vector width only. Here `mojo build` compiles the kernel for AVX2-only
(`x86-64-v3`, 8 float32 lanes), for AVX-512 without VNNI (`skylake-avx512`,
where the host can run it) and for the host (16 lanes with AVX-512) and
runs each against a scalar loop: the float32, bfloat16, float16, Q8_0,
Q4_K and Q6_K panels.
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

MODULAR = Path(next(iter(max.__path__))).resolve().parent / "modular"
CHECK = Path(__file__).with_name("kernel_targets_check.mojo")
AVX512 = (
    "avx512f" in Path("/proc/cpuinfo").read_text()
    if Path("/proc/cpuinfo").exists()
    else False
)

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="x86-64 vector widths only"
)


def build_and_run(tmp_path: Path, target_cpu: str | None) -> str:
    lib = MODULAR / "lib"
    env = {
        **os.environ,
        "MODULAR_MOJO_MAX_COMPILERRT_PATH": str(lib / "libKGENCompilerRTShared.so"),
        "MODULAR_MOJO_MAX_LLD_PATH": str(MODULAR / "bin" / "lld"),
        "MODULAR_MOJO_MAX_IMPORT_PATH": str(lib / "mojo"),
        "MODULAR_MOJO_MAX_MGPRT_PATH": str(lib / "libMGPRT.so"),
    }
    exe = tmp_path / f"check-{target_cpu or 'host'}"
    cmd = [str(MODULAR / "bin" / "mojo"), "build", "-I", str(lib / "mojo")]
    cmd += ["-I", str(KERNELS_DIR.parent)]
    if target_cpu:
        cmd += ["--target-cpu", target_cpu]
    for name in ("AsyncRTMojoBindings", "AsyncRTRuntimeGlobals", "MSupportGlobals"):
        cmd += ["-Xlinker", f"-l{name}"]
    cmd += ["-Xlinker", f"-L{lib}", str(CHECK), "-o", str(exe)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    run = subprocess.run(
        [str(exe)],
        env={**env, "LD_LIBRARY_PATH": str(lib)},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run.stdout


def check_output(out: str, simd_width: int) -> None:
    assert f"simd_width {simd_width} " in out, out
    for kernel in ("f32 ", "bf16 ", "f16 ", "q8 ", "q4k ", "q6k "):
        errors = re.findall(rf"^{kernel}rows (\d+) max_abs_error (\S+)", out, re.M)
        assert [int(r) for r, _ in errors] == list(range(1, 20)), (kernel, out)
        assert all(float(e) == 0.0 for _, e in errors), (kernel, out)


def test_avx2_only_target(tmp_path):
    check_output(build_and_run(tmp_path, "x86-64-v3"), simd_width=8)


@pytest.mark.skipif(not AVX512, reason="runs AVX-512 code")
def test_avx512_without_vnni_target(tmp_path):
    """Intel Xeons before Cascade Lake: 16 lanes, but the byte dot products
    of the integer kernels take the non-VNNI route."""
    check_output(build_and_run(tmp_path, "skylake-avx512"), simd_width=16)


def test_host_target(tmp_path):
    check_output(build_and_run(tmp_path, None), simd_width=16 if AVX512 else 8)
