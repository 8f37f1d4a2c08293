"""The GPU kit's cheap parts (gpu/): the payload's split and join, part
sizes against a device run's limit, and the lists that choose the wheels.
No downloads: the real pack is `gpu/dryrun` (gpu/README.md)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gpu"))

import check  # noqa: E402
import pack  # noqa: E402
import payload  # noqa: E402


def fake_wheel(folder: Path, name: str, size: int, seed: int) -> Path:
    """A wheel-named file of incompressible bytes."""
    import random

    path = folder / f"{name}-1.0-py3-none-any.whl"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.fixture
def wheels(tmp_path) -> list[Path]:
    src = tmp_path / "src"
    src.mkdir()
    sizes = [3_000_000, 1_234_567, 10, 2_500_001]
    return [fake_wheel(src, f"pkg{i}", s, i) for i, s in enumerate(sizes)]


def test_parts_round_trip_to_the_same_wheels(tmp_path, wheels):
    out = tmp_path / "parts"
    parts = payload.pack_wheels(wheels, out, part_mib=1)
    assert len(parts) == len(list(out.glob("part-*"))) > 1
    # Parts may land in different folders (carried, then moved).
    moved = tmp_path / "landed"
    moved.mkdir()
    (out / parts[0].name).rename(moved / parts[0].name)
    got = payload.join_parts(out / payload.MANIFEST, [moved, out], tmp_path / "w")
    assert sorted(p.name for p in got) == sorted(w.name for w in wheels)
    for w in wheels:
        assert (tmp_path / "w" / w.name).read_bytes() == w.read_bytes()


def test_parts_are_equal_and_within_the_limit(tmp_path, wheels):
    parts = payload.pack_wheels(wheels, tmp_path / "p", part_mib=2)
    total = sum(w.stat().st_size for w in wheels)
    assert max(p.size for p in parts) <= 2 * payload.MIB
    assert len(parts) == -(-total // (2 * payload.MIB))  # as few as allowed
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 10_240 + 1024


def test_a_missing_or_corrupted_part_is_named(tmp_path, wheels):
    out = tmp_path / "p"
    parts = payload.pack_wheels(wheels, out, part_mib=1)
    (out / parts[1].name).unlink()
    with pytest.raises(payload.PayloadError, match=parts[1].name):
        payload.join_parts(out / payload.MANIFEST, [out], tmp_path / "w")
    payload.pack_wheels(wheels, out, part_mib=1)
    data = bytearray((out / parts[0].name).read_bytes())
    data[100] ^= 1
    (out / parts[0].name).write_bytes(bytes(data))
    with pytest.raises(payload.PayloadError, match="corrupted"):
        payload.join_parts(out / payload.MANIFEST, [out], tmp_path / "w")


def test_two_versions_of_one_wheel_are_refused(tmp_path, wheels):
    other = wheels[0].with_name("pkg0-2.0-py3-none-any.whl")
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="two versions"):
        payload.pack_wheels([*wheels, other], tmp_path / "p")


def test_a_part_and_the_working_tree_fit_one_run():
    """What travels per part run: the tracked tree, the part, the manifest."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in tracked if f)
    part = payload.DEFAULT_PART_MIB * payload.MIB
    assert tree + part + payload.MIB < payload.RUN_LIMIT_MIB * payload.MIB


def test_the_payload_is_git_ignored():
    for path in (".gpu-payload/cp312/part-01", ".gpu-landed/part-01"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not ignored"


def test_serving_wheels_travel_and_the_cli_and_debugger_do_not():
    image = payload.read_name_list(REPO / "gpu" / "image-packages.txt")
    resolved = [
        {"name": n, "version": "1", "requires_dist": []}
        for n in ("max", "max-core", "mojo-compiler", "mojo", "mojo-lldb-libs",
                  "numpy", "transformers", "fastapi")
    ]  # fmt: skip
    keep, left_out = pack.choose(resolved, image)
    assert [d["name"] for d in keep] == ["max", "max-core", "mojo-compiler", "fastapi"]
    assert set(left_out) == {"mojo", "mojo-lldb-libs", "numpy", "transformers"}
    # The image list must not hide what only the payload can bring.
    assert not image & {"max", "max-core", "mojo-compiler", "gpt2-max"}
    assert {"torch", "transformers", "numpy", "packaging", "requests"} <= image


def test_image_requirements_follow_markers_and_extras():
    image = {"numpy", "transformers", "av"}
    resolved = [
        {"name": "max", "version": "26.7.0", "requires_dist": [
            "numpy>=1.18", "transformers<5.13,>=5.12; extra == 'serve'",
            "av>=14; extra == 'benchmark'", "fastapi>=0.1"]},
        {"name": "gguf", "version": "1", "requires_dist": [
            "numpy>=1.17; python_version >= '3.8'", "numpy<1; python_version < '3'"]},
    ]  # fmt: skip
    wanted = pack.image_requirements(resolved, image, "3.12")
    assert wanted == {
        "numpy": ["gguf: >=1.17", "max: >=1.18"],
        "transformers": ["max: <5.13,>=5.12"],
    }


def test_a_real_wheel_survives_the_round_trip(tmp_path):
    """A zip that pip could install comes out byte for byte."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("demo/__init__.py", "x = 1\n")
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    whl.write_bytes(buf.getvalue())
    payload.pack_wheels([whl], tmp_path / "p")
    (got,) = payload.join_parts(
        tmp_path / "p" / payload.MANIFEST, [tmp_path / "p"], tmp_path / "w"
    )
    assert zipfile.ZipFile(got).read("demo/__init__.py") == b"x = 1\n"


def test_a_payload_with_a_path_outside_is_refused(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.whl")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    parts = payload.split_file(evil, out, payload.MIB)
    manifest = {"parts": [p.__dict__ for p in parts], "wheels": {}}
    (out / payload.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(payload.PayloadError, match="escape"):
        payload.join_parts(out / payload.MANIFEST, [out], tmp_path / "w")
    assert not (tmp_path / "escape.whl").exists()


def test_the_gpu_plan_names_only_known_steps():
    import steps

    assert {name for name, _, _ in check.GPU_PLAN} <= set(steps.STEPS)
    roles = {role for _, role, _ in check.GPU_PLAN if role}
    for devices, shapes in check.SHAPES.items():
        assert set(shapes) == roles, devices
