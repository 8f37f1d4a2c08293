"""Generation ends at EOS (50256) with finish_reason "stop".

Random weights almost never choose EOS, so this serves a copy of the small
fixture whose LM-head row for EOS is a scaled copy of the row of a token the
model picks a few steps in: EOS then wins there. transformers runs the same
modified checkpoint, so the expected stop is its own, not assumed.
"""

from __future__ import annotations

import shutil

import openai
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from gpt2_max.server import MaxServe

pytestmark = pytest.mark.slow

PROMPT = "The harbour was quiet in the early morning"
EOS = 50256


def greedy(checkpoint, ids, n):
    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=EOS,
            eos_token_id=EOS,
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def eos_checkpoint(checkpoints, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("eos") / "variant-eos"
    shutil.copytree(checkpoints["variant"], path)
    ids = tokenizer(PROMPT).input_ids
    third = greedy(path, ids, 3)[2]
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"][EOS] = 3 * weights["lm_head.weight"][third]
    save_file(weights, path / "model.safetensors", {"format": "pt"})
    return path


def test_generation_ends_at_eos(eos_checkpoint, tokenizer, tmp_path):
    ids = tokenizer(PROMPT).input_ids
    expected = greedy(eos_checkpoint, ids, 20)
    assert expected[-1] == EOS and len(expected) < 20  # transformers stops at EOS
    text = tokenizer.decode(expected, skip_special_tokens=True)

    with MaxServe(
        eos_checkpoint, ["--devices", "cpu"], log_path=tmp_path / "serve.log"
    ) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
        result = client.completions.create(
            model=srv.model, prompt=PROMPT, max_tokens=20, temperature=0
        )
        streamed = list(
            client.completions.create(
                model=srv.model,
                prompt=PROMPT,
                max_tokens=20,
                temperature=0,
                stream=True,
            )
        )
        scored = client.completions.create(
            model=srv.model, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=1
        )
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == text
    # The EOS token is generated, so it is counted, as OpenAI counts it.
    assert result.usage.completion_tokens == len(expected)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert streamed[-1].choices[0].finish_reason == "stop"
    # With logprobs, the EOS token is listed last, at the end of the text.
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(expected)
    assert logprobs.tokens[-1] == "<|endoftext|>"
    assert logprobs.text_offset[-1] == len(text)
