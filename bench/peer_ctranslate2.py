"""CTranslate2, in process, on the benchmark's checkpoint (issue 25).

A peer users pick for fast GPT-2 on CPU; int8 is its usual setting. It
lives in its own venv with the converter's needs (torch from the local CPU
build, transformers). Everything runs in that venv's python
(`ctranslate2_child.py`): the conversion, the measurement, and a greedy
check against transformers that says whether it does the same work.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from . import peer_venv

REQUIREMENTS = ["ctranslate2==4.8.5", "torch==2.13.0", "transformers==5.12.1"]
CHILD = Path(__file__).with_name("ctranslate2_child.py")
COMPUTE_TYPES = {"float32": None, "int8": "int8"}
"""CTranslate2's compute type -> the converter's `--quantization` (None:
float32 as stored)."""


class ChildFailed(RuntimeError):
    """The CTranslate2 child exited without its JSON line."""


def install(root: Path = peer_venv.PEERS_DIR) -> Path:
    """The CTranslate2 peer's python; raises `peer_venv.PeerUnavailable`."""
    return peer_venv.ensure("ctranslate2", REQUIREMENTS, root=root)


def run_child(python: Path, job: dict[str, Any], timeout: float = 3600) -> dict:
    """The child's JSON answer to `job`; `ChildFailed` with its last line
    of stderr otherwise."""
    done = subprocess.run(
        [str(python), "-I", str(CHILD)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=peer_venv.peer_env(),
        timeout=timeout,
        check=False,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ChildFailed(f"CTranslate2 {job['mode']} failed: {why[0]}")
    return json.loads(lines[-1])


def convert(python: Path, checkpoint: Path, out_dir: Path, quantization: str) -> Path:
    """`checkpoint` converted for `quantization` (a key of `COMPUTE_TYPES`)
    under `out_dir`, reused when a conversion of it is already there."""
    if quantization not in COMPUTE_TYPES:
        raise ValueError(f"quantization {quantization!r}: one of {list(COMPUTE_TYPES)}")
    model_dir = (out_dir / f"{checkpoint.name}-ct2-{quantization}").resolve()
    stamp = model_dir / ".converted-from"
    source = str(checkpoint.resolve())
    if (model_dir / "model.bin").exists() and stamp.exists():
        if stamp.read_text() == source:
            return model_dir
    args = ["--model", source, "--output_dir", str(model_dir), "--force"]
    if COMPUTE_TYPES[quantization]:
        args += ["--quantization", COMPUTE_TYPES[quantization]]
    print(f"[ctranslate2] converting {checkpoint.name} ({quantization})", flush=True)
    run_child(python, {"mode": "convert", "args": args})
    stamp.write_text(source)
    return model_dir


def measure(
    python: Path,
    model_dir: Path,
    compute_type: str,
    prompts: list[list[int]],
    max_tokens: int,
    threads: int,
    batches: tuple[int, ...] = (1, 32),
) -> dict[str, Any]:
    """One greedy `generate_batch` per batch size of the first `batch`
    prompts, exactly `max_tokens` new tokens each: `{str(batch):
    {tokens_per_second, wall_seconds, output_tokens}}`, or `{skipped}`."""
    job = {
        "mode": "measure",
        "model_dir": str(model_dir),
        "compute_type": compute_type,
        "prompts": prompts,
        "max_tokens": max_tokens,
        "threads": threads,
        "batches": list(batches),
    }
    try:
        return run_child(python, job)
    except (ChildFailed, subprocess.TimeoutExpired) as e:
        return {"skipped": str(e)}


def check_greedy(
    python: Path,
    checkpoint: Path,
    float32_model_dir: Path,
    prompts: list[list[int]],
    max_tokens: int,
    threads: int,
) -> dict[str, Any]:
    """Whether CTranslate2 float32 greedy ids equal transformers' on
    `prompts` (`greedy_matches_transformers`), or `{skipped}`. CTranslate2's
    GPT-2 converter ignores some config fields (e.g. the variant preset's
    `scale_attn_by_inverse_layer_idx`): this is where that shows."""
    job = {
        "mode": "check",
        "model_dir": str(float32_model_dir),
        "checkpoint": str(checkpoint.resolve()),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "threads": threads,
    }
    try:
        return run_child(python, job)
    except (ChildFailed, subprocess.TimeoutExpired) as e:
        return {"skipped": str(e)}
