"""The payload that carries MAX to a machine with no registry: wheels in one
tar, cut into parts small enough to travel one per device run, and joined
back with every byte checked.

Standard library only: `gpu/check` runs this under the GPU image's Python
before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
# A run carries at most 64 MiB (the repository, the part, the manifest).
RUN_LIMIT_MIB = 64
# The largest part; parts are then cut equal, as few as that allows.
DEFAULT_PART_MIB = 56
MANIFEST = "manifest.json"
PART_PREFIX = "part-"

# Wheels that `max serve` and graph compilation never load: the `mojo` CLI
# (language server, REPL, debugger front ends) and its debugger libraries.
# MAX's own `mojo_compiler` wheel, which holds `bin/mojo` that compiles
# custom Mojo ops at graph load, and `mojo.paths`, which MAX imports, stay.
NOT_FOR_SERVING = frozenset({"mojo", "mojo-lldb-libs", "mblack"})


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_name_list(path: Path) -> set[str]:
    """Normalized names, one a line; `#` starts a comment."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalize(line))
    return names


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_name(filename: str) -> str:
    """The normalized distribution name of a wheel file."""
    if not filename.endswith(".whl"):
        raise ValueError(f"{filename} is not a wheel")
    return normalize(filename.split("-", 1)[0])


@dataclass(frozen=True)
class Part:
    name: str
    size: int
    sha256: str


def pack_wheels(
    wheels: Sequence[Path],
    out_dir: Path,
    *,
    part_mib: int = DEFAULT_PART_MIB,
    extra: dict[str, object] | None = None,
) -> list[Part]:
    """Tars `wheels`, cuts the tar into as few equal parts of at most
    `part_mib` MiB as will do, in `out_dir`, and writes the manifest (each
    wheel's and each part's sha256)."""
    if not 1 <= part_mib < RUN_LIMIT_MIB:
        raise ValueError(f"part size {part_mib} MiB must be 1..{RUN_LIMIT_MIB - 1}")
    names = [w.name for w in wheels]
    if len(set(map(wheel_name, names))) != len(names):
        raise ValueError(f"two versions of one distribution: {sorted(names)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(PART_PREFIX + "*"):
        old.unlink()
    tar_path = out_dir / "payload.tar"
    with tarfile.open(tar_path, "w") as tar:
        for wheel in sorted(wheels):
            tar.add(wheel, arcname=wheel.name)
    part_bytes = balanced_part_bytes(tar_path.stat().st_size, part_mib * MIB)
    parts = split_file(tar_path, out_dir, part_bytes)
    tar_path.unlink()
    manifest = {
        "part_bytes": part_bytes,
        "parts": [p.__dict__ for p in parts],
        "wheels": {
            w.name: {"size": w.stat().st_size, "sha256": sha256(w)} for w in wheels
        },
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return parts


def balanced_part_bytes(total: int, largest: int) -> int:
    """Equal parts, as few as parts of at most `largest` bytes allow."""
    count = max(1, -(-total // largest))
    return -(-total // count)


def split_file(path: Path, out_dir: Path, part_bytes: int) -> list[Part]:
    """Cuts `path` into numbered parts of at most `part_bytes` bytes."""
    parts = []
    with path.open("rb") as f:
        index = 1
        while block := f.read(part_bytes):
            name = f"{PART_PREFIX}{index:02d}"
            (out_dir / name).write_bytes(block)
            digest = hashlib.sha256(block).hexdigest()
            parts.append(Part(name, len(block), digest))
            index += 1
    return parts


class PayloadError(Exception):
    """A part missing, truncated or corrupted, or a wheel that does not match."""


def missing_parts(manifest: dict, dirs: Iterable[Path]) -> list[str]:
    """Parts named in the manifest that none of `dirs` holds whole."""
    found = {
        p.name: p.stat().st_size for d in dirs for p in Path(d).glob(PART_PREFIX + "*")
    }
    return [p["name"] for p in manifest["parts"] if found.get(p["name"]) != p["size"]]


def join_parts(
    manifest_path: Path, dirs: Sequence[Path], wheel_dir: Path
) -> list[Path]:
    """Checks every part against the manifest, joins them, and unpacks the
    wheels into `wheel_dir`, each checked against its own sha256."""
    manifest = json.loads(manifest_path.read_text())
    missing = missing_parts(manifest, dirs)
    if missing:
        raise PayloadError(f"parts missing or incomplete: {', '.join(missing)}")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    tar_path = wheel_dir / "payload.tar"
    with tar_path.open("wb") as out:
        for part in manifest["parts"]:
            path = next(
                Path(d) / part["name"]
                for d in dirs
                if (Path(d) / part["name"]).is_file()
            )
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise PayloadError(f"{part['name']} is corrupted (sha256 differs)")
            out.write(data)
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        for member in members:
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise PayloadError(f"unexpected member {member.name!r} in the payload")
        tar.extractall(wheel_dir, filter="data")
    tar_path.unlink()
    wheels = []
    for name, want in manifest["wheels"].items():
        path = wheel_dir / name
        if not path.is_file() or sha256(path) != want["sha256"]:
            raise PayloadError(f"{name} differs from the manifest")
        wheels.append(path)
    return wheels
