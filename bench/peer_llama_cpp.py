"""llama.cpp, in process, on the same GGUF files as ours.

llama-cpp-python is built from source in its own venv (about ten minutes
on two cores the first time), so llama.cpp is compiled for this machine's
CPU like our kernels are. The measurement runs in that venv's python
(`llama_cpp_child.py`), one stream, the way `engine.py` measures ours.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from . import peer_venv

REQUIREMENTS = ["--no-binary=llama-cpp-python", "llama-cpp-python==0.3.36"]
CHILD = Path(__file__).with_name("llama_cpp_child.py")


def install(root: Path = peer_venv.PEERS_DIR) -> Path:
    """The llama.cpp peer's python; raises `peer_venv.PeerUnavailable`."""
    return peer_venv.ensure(
        "llama-cpp-python",
        REQUIREMENTS,
        env={"CMAKE_BUILD_PARALLEL_LEVEL": "2"},
        root=root,
    )


def measure(
    python: Path,
    files: dict[str, Path],
    *,
    threads: int,
    prompt_len: int = 32,
    steps: int = 40,
    warmup: int = 5,
    prefill_tokens: int = 512,
    n_ctx: int = 1024,
) -> dict[str, Any]:
    """One-stream decode and a prefill for each GGUF in `files` (label ->
    path): `{label: {tokens_per_second, step_ms, prefill_seconds} | {skipped}}`."""
    job = {
        "files": {label: str(path) for label, path in files.items()},
        "threads": threads,
        "prompt_len": prompt_len,
        "steps": steps,
        "warmup": warmup,
        "prefill_tokens": prefill_tokens,
        "n_ctx": n_ctx,
    }
    done = subprocess.run(
        [str(python), "-I", str(CHILD)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=peer_venv.peer_env(),
        timeout=3600,
        check=False,
    )
    results: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row.pop("label")] = row
    for label in files:
        if label not in results:
            why = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            results[label] = {"skipped": f"llama.cpp child failed: {why[0]}"}
    return results
