"""`max serve` started the way a service manager starts it: from an
unrelated directory, without PYTHONPATH, the environment's `bin` not on
PATH, the package found only through its installation."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest
import torch
from transformers import GPT2LMHeadModel

from gpt2_max.server import MaxServe

from .test_worker_interpreter import path_without_this_environment

pytestmark = pytest.mark.slow

PROMPT = "The harbour was quiet in the early morning, and the fishing boats"


def test_serve_from_another_directory_matches_transformers(
    checkpoints, tokenizer, tmp_path
):
    checkpoint = checkpoints["variant"]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    server = MaxServe(
        checkpoint,
        ["--devices", "cpu"],
        log_path=tmp_path / "max-serve.log",
        env={"PATH": path_without_this_environment()},
        unset_env=["PYTHONPATH"],
        cwd=workdir,
        max_executable=str(Path(sys.executable).parent / "max"),
    )
    with server:  # cold compile included
        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        )
        result = client.completions.create(
            model=server.model, prompt=PROMPT, max_tokens=12, temperature=0
        )

    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, pad_token_id=50256
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # The server holds back a character whose bytes are not all generated yet.
    assert result.choices[0].text == expected.rstrip("\ufffd")
    assert result.usage.completion_tokens == 12
