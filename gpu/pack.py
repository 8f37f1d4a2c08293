"""`gpu/pack`: the wheels MAX serving needs on the GPU image, in parts.

Resolves `max[serve]` (the pinned stack) for the target Python and
platform from wheel metadata alone (`pip install --dry-run --report`),
leaves out what the image already has (`image-packages.txt`) and what
serving never loads (`payload.NOT_FOR_SERVING`), downloads the rest, adds
this project built as a wheel, and cuts the lot into parts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from payload import (
    DEFAULT_PART_MIB,
    NOT_FOR_SERVING,
    normalize,
    pack_wheels,
    read_name_list,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STACK = "max[serve]==26.7.0"
IMAGE_PACKAGES = HERE / "image-packages.txt"


def platform_flags(python: str, glibc_minor: int) -> list[str]:
    """pip's target flags: pip matches each manylinux tag exactly."""
    tags = [f"manylinux_2_{n}_x86_64" for n in range(glibc_minor, 16, -1)]
    tags += ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    flags = [
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
    ]
    for tag in tags:
        flags += ["--platform", tag]
    return flags


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(stack: str, flags: list[str], work: Path) -> list[dict]:
    """The resolved distributions: name, version, requires_dist."""
    report = work / "report.json"
    pip(
        "install", "--quiet", "--dry-run", "--ignore-installed",
        "--target", str(work / "unused"), "--report", str(report), *flags, stack,
    )  # fmt: skip
    out = []
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        out.append(
            {
                "name": normalize(meta["name"]),
                "version": meta["version"],
                "requires_dist": meta.get("requires_dist", []),
            }
        )
    return out


def choose(resolved: list[dict], image: set[str]) -> tuple[list[dict], dict[str, str]]:
    """Splits the resolution into what travels and what is left out (why)."""
    keep, left_out = [], {}
    for dist in resolved:
        if dist["name"] in NOT_FOR_SERVING:
            left_out[dist["name"]] = "not loaded by max serve"
        elif dist["name"] in image:
            left_out[dist["name"]] = f"in the GPU image (resolved {dist['version']})"
        else:
            keep.append(dist)
    return keep, left_out


def image_requirements(resolved: list[dict], image: set[str], python: str) -> dict:
    """What the travelling wheels ask of the image's packages, so `check`
    can compare with the versions it finds there."""
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": python + ".0"}
    wanted: dict[str, list[str]] = {}
    for dist in resolved:
        if dist["name"] in image:
            continue
        for text in dist["requires_dist"]:
            req = Requirement(text)
            name = normalize(req.name)
            if name not in image:
                continue
            extra = "serve" if dist["name"] == "max" else ""
            if req.marker and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if str(req.specifier):
                wanted.setdefault(name, []).append(f"{dist['name']}: {req.specifier}")
    return {k: sorted(set(v)) for k, v in sorted(wanted.items())}


def main() -> int:
    parser = argparse.ArgumentParser(prog="gpu/pack", description=__doc__)
    parser.add_argument(
        "--python", default="3.12", help="target Python (3.12 on the H200)"
    )
    parser.add_argument(
        "--glibc", type=int, default=34, help="newest manylinux_2_N tag"
    )
    parser.add_argument("--out", type=Path, help="default .gpu-payload/cpXY")
    parser.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    args = parser.parse_args()
    tag = "cp" + args.python.replace(".", "")
    out = args.out or REPO / ".gpu-payload" / tag
    flags = platform_flags(args.python, args.glibc)
    image = read_name_list(IMAGE_PACKAGES)

    with tempfile.TemporaryDirectory(prefix="gpu-pack-") as tmp:
        work = Path(tmp)
        resolved = resolve(STACK, flags, work)
        keep, left_out = choose(resolved, image)
        wheels = work / "wheels"
        pins = [f"{d['name']}=={d['version']}" for d in keep]
        pip("download", "--quiet", "--no-deps", *flags, "-d", str(wheels), *pins)
        pip("wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO))
        shutil.rmtree(REPO / "build", ignore_errors=True)
        found = sorted(wheels.glob("*.whl"))
        parts = pack_wheels(
            found,
            out,
            part_mib=args.part_mib,
            extra={
                "python": args.python,
                "stack": STACK,
                "left_out": left_out,
                "image_requirements": image_requirements(resolved, image, args.python),
            },
        )
    total = sum(p.size for p in parts)
    print(
        f"{len(found)} wheels, {total / 2**20:.1f} MiB in {len(parts)} parts, in {out}:"
    )
    for p in parts:
        print(f"  {p.name}  {p.size / 2**20:5.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
