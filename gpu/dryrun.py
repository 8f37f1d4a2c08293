"""`gpu/dryrun`: the kit proven without a GPU.

Packs the stack for this machine's Python (cp311 here), builds a stand-in
for the GPU image (a fresh venv that sees only the packages the image is
listed with, linked from the project venv: no MAX, no gpt2-max), and runs
`gpu/check --devices cpu` with that venv's Python: the parts are joined,
installed offline (`pip --no-index`) into a scratch directory, and every
step runs on the CPU on the tiny `variant` shape, `gpt2-max verify
--devices cpu` among them. Downloads about 280 MiB; not part of ./run test.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

from payload import normalize, read_name_list

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = REPO / ".gpu-payload" / "dryrun"
# The venv brings its own installer.
INSTALLER = {"pip", "setuptools", "wheel"}


def image_stand_in(venv: Path) -> Path:
    """A fresh venv whose site-packages sees, through a .pth file, only the
    distributions of the image's package list that this interpreter has."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    image = read_name_list(HERE / "image-packages.txt") - INSTALLER
    linked = venv / "image-packages"
    linked.mkdir()
    for dist in md.distributions():
        if normalize(dist.metadata["Name"]) not in image:
            continue
        root = Path(dist.locate_file(""))
        for top in {
            Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")
        }:
            if top.endswith(".pth") or (linked / top).exists():
                continue
            (linked / top).symlink_to(root / top)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "image-packages.pth").write_text(str(linked) + "\n")
    return venv / "bin" / "python"


def main() -> int:
    parser = argparse.ArgumentParser(prog="gpu/dryrun", description=__doc__)
    parser.add_argument("--skip-pack", action="store_true", help="reuse the parts")
    args = parser.parse_args()
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not args.skip_pack:
        subprocess.run(
            [sys.executable, str(HERE / "pack.py"), "--python", tag], check=True
        )
    python = image_stand_in(WORK / "venv")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in "
         "('max', 'gpt2_max', 'torch', 'transformers') if u.find_spec(m)])"],
        capture_output=True, text=True, cwd="/", check=True,
    )  # fmt: skip
    print(f"stand-in image {python}: importable {probe.stdout.strip()}", flush=True)
    shutil.rmtree(WORK / "scratch", ignore_errors=True)
    shutil.rmtree(WORK / "out", ignore_errors=True)
    check = [
        str(python), str(HERE / "check.py"), "--devices", "cpu",
        "--scratch", str(WORK / "scratch"), "--out", str(WORK / "out"),
    ]  # fmt: skip
    return subprocess.run(check, env={"PIP_NO_INDEX": "1", **_env()}).returncode


def _env() -> dict[str, str]:
    import os

    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    return env


if __name__ == "__main__":
    sys.exit(main())
