"""Numerical parity of our MAX architecture against `transformers`.

Both sides decode greedily from the same token ids: MAX as the server runs
it (one ragged batch, paged KV cache) and `transformers`' own
`GPT2LMHeadModel` with its KV cache, one prompt at a time. Each step's
last-token logits are compared as a relative L2 error, and the first step
where the greedy tokens part is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .stepper import stepper

# float32 accumulated in a different order differs by ~1e-6; a real bug
# (a missing position embedding, an untransposed weight) by 1e-1 or more.
FLOAT32_TOLERANCE = 1e-4

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Decode:
    """Greedy decode of a batch: per-step logits and the tokens chosen."""

    logits: list[np.ndarray] = field(default_factory=list)  # [steps] x [B, V]
    tokens: list[list[int]] = field(default_factory=list)  # [B] x [steps]


@dataclass
class PromptParity:
    prompt_len: int
    rel_errors: list[float]  # one per step compared (stops at divergence)
    max_tokens: list[int]
    hf_tokens: list[int]

    @property
    def first_divergence(self) -> int | None:
        for step, (a, b) in enumerate(
            zip(self.max_tokens, self.hf_tokens, strict=True)
        ):
            if a != b:
                return step
        return None

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors)


@dataclass
class ParityReport:
    prompts: list[PromptParity]
    tolerance: float = FLOAT32_TOLERANCE

    @property
    def passed(self) -> bool:
        return all(
            p.first_divergence is None and p.max_rel_error <= self.tolerance
            for p in self.prompts
        )


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def max_greedy_decode(
    checkpoint: str | Path,
    prompts: Sequence[Sequence[int]],
    steps: int,
    *,
    devices: str = "cpu",
    encoding: str = "float32",
    weight_path: str | Path | None = None,
    forced: Sequence[Sequence[int]] | None = None,
    architecture: object | None = None,
    progress: Progress = _quiet,
) -> Decode:
    """Runs `steps` greedy steps (prefill + steps-1 decodes) on MAX.

    All prompts prefill together as one ragged batch and then decode
    together, exactly as `max serve` batches them. With `forced` (one token
    list per prompt, e.g. the oracle's greedy tokens) each step is fed the
    forced token instead of its own choice, so both sides see the same
    inputs at every step even after their choices part.
    """
    longest = max(len(p) for p in prompts) + steps - 1
    progress("compiling the MAX graph (minutes on a cold CPU cache)")
    out = Decode(tokens=[[] for _ in prompts])
    with stepper(
        checkpoint,
        prompts,
        longest,
        devices=devices,
        encoding=encoding,
        weight_path=weight_path,
        architecture=architecture,
    ) as batch:
        for step in range(steps):
            progress(f"MAX step {step + 1}/{steps}")
            logits, _ = batch.step()
            out.logits.append(logits)
            chosen = [int(row.argmax()) for row in logits]
            for tokens, token in zip(out.tokens, chosen, strict=True):
                tokens.append(token)
            if step + 1 < steps:
                batch.feed([f[step] for f in forced] if forced else chosen)
    return out


def transformers_greedy_decode(
    checkpoint: str | Path,
    prompts: Sequence[Sequence[int]],
    steps: int,
    *,
    progress: Progress = _quiet,
) -> Decode:
    """The oracle: `transformers`' GPT2LMHeadModel, float32, its KV cache."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    per_prompt: list[list[np.ndarray]] = []
    out = Decode()
    with torch.inference_mode():
        for n, prompt in enumerate(prompts):
            progress(f"transformers prompt {n + 1}/{len(prompts)}")
            ids = torch.tensor([list(prompt)])
            past = None
            rows: list[np.ndarray] = []
            tokens: list[int] = []
            for _ in range(steps):
                result = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                row = result.logits[0, -1].float().numpy().copy()
                rows.append(row)
                tokens.append(int(row.argmax()))
                ids = torch.tensor([[tokens[-1]]])
            per_prompt.append(rows)
            out.tokens.append(tokens)
    out.logits = [np.stack([rows[s] for rows in per_prompt]) for s in range(steps)]
    return out


def compare(
    ours: Decode,
    oracle: Decode,
    prompts: Sequence[Sequence[int]],
    tolerance: float = FLOAT32_TOLERANCE,
) -> ParityReport:
    """Per-prompt errors, compared until the greedy tokens first differ."""
    results = []
    for i, prompt in enumerate(prompts):
        errors = []
        for step, (a, b) in enumerate(zip(ours.logits, oracle.logits, strict=True)):
            errors.append(relative_error(a[i], b[i]))
            if ours.tokens[i][step] != oracle.tokens[i][step]:
                break  # later steps see different inputs
        results.append(
            PromptParity(len(prompt), errors, ours.tokens[i], oracle.tokens[i])
        )
    return ParityReport(results, tolerance)
