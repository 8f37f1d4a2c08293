"""`max generate` with our architecture prints transformers' greedy text."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from transformers import GPT2LMHeadModel

PROMPT = "The harbour was quiet in the early morning, and the fishing boats"
NEW_TOKENS = 24


@pytest.mark.slow
def test_max_generate_matches_transformers_greedy(checkpoints, tokenizer):
    checkpoint = checkpoints["distilgpt2"]
    result = subprocess.run(
        [
            "max",
            "generate",
            "--custom-architectures",
            "gpt2_lmhead_model",
            "--model-path",
            str(checkpoint),
            "--devices",
            "cpu",
            "--top-k",
            "1",
            "--max-new-tokens",
            str(NEW_TOKENS),
            "--prompt",
            PROMPT,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "MAX_SERVE_DISABLE_TELEMETRY": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.split("\nPrompt size:")[0]

    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=50256
        )
    new = out[0, ids.shape[1] :].tolist()
    assert len(new) == NEW_TOKENS  # random weights: EOS is not expected early
    # max generate prints each token as it is decoded on its own.
    expected = "".join(tokenizer.decode([t], skip_special_tokens=True) for t in new)
    assert printed == expected
