"""What an x86-64 Linux machine needs to link and run an aarch64 Mojo binary.

`prepare()` gathers, once, under `artifacts/arm-sysroot/`:
- QEMU's user-mode emulator for aarch64 (Debian's `qemu-user-static`);
- an aarch64 C library and its start files (Debian's `*-arm64-cross`
  packages: `libc6`, `libc6-dev`, `libgcc-s1`, `libstdc++6`);
- MAX's aarch64 runtime libraries that a `mojo build` binary links
  (`libKGENCompilerRTShared.so` and its neighbours), from the aarch64 wheels
  of the `max-core` and `mojo-compiler` versions installed here.

Packages come through `apt-get download` (no system change; `apt-get
update` first when the package lists are empty and this runs as root) and
`pip download`, so it needs Debian's and PyPI's registries once; later runs
reuse the cache. `python tests/kernels/arm_sysroot.py` prepares it ahead of a test
run and prints where.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "artifacts" / "arm-sysroot"
DEBIAN_PACKAGES = (
    "libc6-arm64-cross",
    "libc6-dev-arm64-cross",
    "libgcc-s1-arm64-cross",
    "libstdc++6-arm64-cross",
)
QEMU_PACKAGE = "qemu-user-static"
QEMU_BINARY = "usr/bin/qemu-aarch64-static"
WHEELS = ("max-core", "mojo-compiler")
"""The distributions that hold `RUNTIME_LIBRARIES`, at the versions installed."""
RUNTIME_LIBRARIES = (
    "libKGENCompilerRTShared.so",
    "libAsyncRTMojoBindings.so",
    "libAsyncRTRuntimeGlobals.so",
    "libMSupportGlobals.so",
)
WHEEL_PLATFORM = "manylinux_2_34_aarch64"


@dataclass(frozen=True)
class ArmSysroot:
    """Paths into a prepared sysroot."""

    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / QEMU_BINARY

    @property
    def libc_prefix(self) -> Path:
        """QEMU's `-L`: the aarch64 loader and C library live under it."""
        return self.root / "usr" / "aarch64-linux-gnu"

    @property
    def libc_dir(self) -> Path:
        return self.libc_prefix / "lib"

    @property
    def max_lib_dir(self) -> Path:
        """MAX's aarch64 runtime libraries."""
        return self.root / "max-lib"

    def link_command(self, lld: Path, obj: Path, exe: Path) -> list[str]:
        """`ld.lld` arguments that make `obj` (a `mojo build --emit object`)
        a PIE executable against this sysroot and MAX's runtime."""
        lib = self.libc_dir
        return [
            str(lld), "-flavor", "gnu", f"--sysroot={self.root}", "-pie",
            "--eh-frame-hdr", "-dynamic-linker", "/lib/ld-linux-aarch64.so.1",
            "-o", str(exe), str(lib / "Scrt1.o"), str(lib / "crti.o"), str(obj),
            f"-L{self.max_lib_dir}", "-lKGENCompilerRTShared", "-lAsyncRTMojoBindings",
            f"-L{lib}", "--gc-sections", "-lm", "-lc", str(lib / "crtn.o"),
        ]  # fmt: skip

    def run_command(self, exe: Path) -> list[str]:
        """Runs `exe` under emulation of a CPU with every feature QEMU has
        (dotprod, SVE2, i8mm...), on the sysroot's loader and libraries."""
        return [
            str(self.qemu), "-cpu", "max", "-L", str(self.libc_prefix),
            "-E", f"LD_LIBRARY_PATH={self.max_lib_dir}:{self.libc_dir}", str(exe),
        ]  # fmt: skip

    def complete(self) -> bool:
        return (
            self.qemu.is_file()
            and (self.libc_dir / "libc.so.6").is_file()
            and (self.libc_dir / "Scrt1.o").is_file()
            and all((self.max_lib_dir / n).is_file() for n in RUNTIME_LIBRARIES)
        )


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )


def _apt_download(packages: list[str], into: Path) -> None:
    """`apt-get download`; when the package lists are empty, updates them
    first (root only)."""
    try:
        _run(["apt-get", "download", *packages], into)
    except RuntimeError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], into)
        _run(["apt-get", "download", *packages], into)


def _extract_debs(work: Path, root: Path) -> None:
    for deb in sorted(work.glob("*.deb")):
        if deb.name.startswith(QEMU_PACKAGE):
            # Only the aarch64 emulator of the package's many.
            tar = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(deb)],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(
                ["tar", "-x", "-C", str(root), f"./{QEMU_BINARY}"],
                input=tar,
                check=True,
            )
        else:
            _run(["dpkg-deb", "-x", str(deb), str(root)], work)


def _extract_wheels(work: Path, lib_dir: Path) -> None:
    lib_dir.mkdir(parents=True, exist_ok=True)
    for wheel in work.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if Path(name).name in RUNTIME_LIBRARIES:
                    (lib_dir / Path(name).name).write_bytes(archive.read(name))


def prepare(root: Path = ROOT) -> ArmSysroot:
    """The sysroot under `root`, gathered on first use."""
    sysroot = ArmSysroot(root)
    if sysroot.complete():
        return sysroot
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            "preparing the aarch64 sysroot needs Debian's apt-get and dpkg-deb"
        )
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        work = Path(tmp)
        _apt_download([QEMU_PACKAGE, *DEBIAN_PACKAGES], work)
        pins = [f"{name}=={version(name)}" for name in WHEELS]
        _run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
                "--python-version", "3.11", "-d", str(work), *pins,
            ],
            work,
        )  # fmt: skip
        _extract_debs(work, root)
        _extract_wheels(work, sysroot.max_lib_dir)
    if not sysroot.complete():
        raise RuntimeError(f"the aarch64 sysroot under {root} is still incomplete")
    return sysroot


if __name__ == "__main__":
    print(prepare().root)
