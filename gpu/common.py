"""What the steps of `gpu/check` share: where things are, and the oracle."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from payload import MANIFEST

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Verdict:
    status: str  # pass, fail, error
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def site() -> Path:
    return Path(os.environ["GPUKIT_SITE"])


def scratch() -> Path:
    return Path(os.environ["GPUKIT_SCRATCH"])


def checkpoint_dir(shape: str) -> Path:
    return scratch() / "checkpoints" / shape


def manifest_path() -> Path:
    """The manifest the stack was joined from (landed, else carried)."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in (REPO / ".gpu-landed", REPO / ".gpu-payload" / tag):
        if (folder / MANIFEST).is_file():
            return folder / MANIFEST
    raise FileNotFoundError(f"no {MANIFEST} in .gpu-landed or .gpu-payload/{tag}")


def torch_device(devices: str) -> str:
    return "cuda" if devices == "gpu" else "cpu"


def oracle_decode(
    checkpoint: Path, prompts: Sequence[Sequence[int]], steps: int, device: str
) -> Any:
    """transformers' GPT2LMHeadModel in float32 on `device`, greedy with its
    KV cache, one prompt at a time: per-step logits and tokens, as
    `gpt2_max.parity.Decode` holds them."""
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    from gpt2_max.parity import Decode

    if device == "cuda":  # the oracle stays float32, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = GPT2LMHeadModel.from_pretrained(str(checkpoint), dtype=torch.float32)
    model = model.to(device).eval()
    out = Decode()
    per_prompt = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=device)
            past, rows, tokens = None, [], []
            for _ in range(steps):
                result = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                row = result.logits[0, -1].float().cpu().numpy().copy()
                rows.append(row)
                tokens.append(int(row.argmax()))
                ids = torch.tensor([[tokens[-1]]], device=device)
            per_prompt.append(rows)
            out.tokens.append(tokens)
    out.logits = [np.stack([rows[s] for rows in per_prompt]) for s in range(steps)]
    return out


def log_softmax_rows(checkpoint: Path, ids: Sequence[int], device: str) -> Any:
    """log-softmax of every position's logits, float32 on `device` (numpy)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(checkpoint), dtype=torch.float32)
    model = model.to(device).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([list(ids)], device=device)).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
