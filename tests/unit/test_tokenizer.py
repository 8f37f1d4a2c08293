"""The tokenizer MAX builds for our architecture, as `max serve` builds it."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from max.pipelines import PIPELINE_REGISTRY
from max.pipelines.context.exceptions import InputError
from max.pipelines.context.sampling_params import SamplingParams
from max.pipelines.lib import PipelineConfig
from max.pipelines.lib.pipeline_args import PipelineArgs
from max.pipelines.modeling.types import (
    RequestID,
    TextGenerationRequest,
    TextGenerationRequestMessage,
)

from gpt2_lmhead_model import gpt2_arch
from gpt2_lmhead_model.tokenizer import GPT2Tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
]


def serve_tokenizer(model_path, **overrides) -> GPT2Tokenizer:
    PIPELINE_REGISTRY.register(gpt2_arch, allow_override=True)
    config = PipelineConfig.from_args(
        PipelineArgs.from_flat_kwargs(
            model_path=str(model_path), device_specs="cpu", **overrides
        )
    )
    tokenizer = PIPELINE_REGISTRY.retrieve_tokenizer(config)
    assert isinstance(tokenizer, GPT2Tokenizer)
    return tokenizer


def chat(tokenizer, messages=MESSAGES) -> str:
    return tokenizer.apply_chat_template(
        [TextGenerationRequestMessage(**m) for m in messages], None
    )


@pytest.fixture(scope="module")
def distil(checkpoints):
    return serve_tokenizer(checkpoints["distilgpt2"])


def test_default_chat_template_when_the_checkpoint_has_none(distil):
    assert chat(distil) == "System: Be brief.\nUser: Hi there\nAssistant:"
    # Still a completion model to `max generate`, which wraps --prompt in
    # the HF tokenizer's template when it has one.
    assert not distil.delegate.chat_template


def test_chat_template_flag_overrides_the_default(checkpoints, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    tokenizer = serve_tokenizer(checkpoints["distilgpt2"], chat_template=template)
    assert chat(tokenizer) == "<Be brief.><Hi there>"


def test_the_checkpoints_own_template_wins(checkpoints, tmp_path):
    own = tmp_path / "with-template"
    own.mkdir()
    for entry in checkpoints["distilgpt2"].iterdir():
        os.symlink(entry, own / entry.name)
    (own / "tokenizer_config.json").unlink()
    (own / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 1024,
                "chat_template": "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}",
            }
        )
    )
    assert chat(serve_tokenizer(own)) == "Be brief.<|endoftext|>Hi there<|endoftext|>"


def new_context(tokenizer, prompt, **params):
    request = TextGenerationRequest(
        request_id=RequestID(),
        model_name="m",
        prompt=prompt,
        sampling_params=SamplingParams(**params),
    )
    return asyncio.run(tokenizer.new_context(request))


def test_out_of_vocabulary_ids_are_refused(distil):
    with pytest.raises(InputError, match=r"token id 50257 is outside .* \[0, 50257\)"):
        new_context(distil, [15496, 50257])
    assert new_context(distil, [15496, 50256]).tokens.prompt_length == 2


def test_zero_max_new_tokens_is_refused(distil):
    with pytest.raises(InputError, match="max_tokens must be at least 1"):
        new_context(distil, "hi", max_new_tokens=0)


def test_empty_prompt_is_refused(distil):
    with pytest.raises(InputError, match="prompt must not be empty"):
        new_context(distil, "")


def test_padded_vocabulary_ids_are_valid_outputs(checkpoints):
    tokenizer = serve_tokenizer(checkpoints["variant"])
    assert len(tokenizer.delegate) == 50257
    assert tokenizer.tokenizer_vocab_size == 50304
    assert new_context(tokenizer, [50300]).vocab_size == 50304


def test_vocabulary_size_is_not_recounted_per_request(distil, monkeypatch):
    # A fast tokenizer's len() rebuilds its vocabulary dict: ~10 ms each
    # time, once per request in the API process, if asked again.
    counted = []
    backend = type(distil.delegate)
    length = backend.__len__
    monkeypatch.setattr(
        backend, "__len__", lambda self: counted.append(1) or length(self)
    )
    for _ in range(3):
        assert new_context(distil, [15496, 50256]).vocab_size == 50257
    assert counted == []
