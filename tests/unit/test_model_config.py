"""config.json handling: GPT-2's rules read, unsupported values refused."""

from __future__ import annotations

import math

import pytest
from transformers import GPT2Config as HFGPT2Config

from gpt2_lmhead_model.model_config import (
    GPT2Config,
    UnsupportedGPT2Config,
    check_kv_cache_dtype,
    hyperparameters,
    validate_hf_config,
)


def hf(**overrides) -> HFGPT2Config:
    return HFGPT2Config(architectures=["GPT2LMHeadModel"], **overrides)


def config(**overrides) -> GPT2Config:
    return GPT2Config(
        **hyperparameters(hf(**overrides)),
        max_seq_len=1024,
        dtype=None,
        devices=[],
        kv_params=None,
    )


def test_n_inner_defaults_to_four_times_n_embd():
    assert hyperparameters(hf(n_embd=96, n_head=3))["n_inner"] == 384
    assert hyperparameters(hf(n_embd=96, n_head=3, n_inner=160))["n_inner"] == 160


def test_attention_scale_follows_gpt2():
    assert config(n_embd=768, n_head=12).attention_scale(5) == pytest.approx(1 / 8)
    assert config(scale_attn_weights=False).attention_scale(3) == 1.0
    scaled = config(n_embd=96, n_head=3, scale_attn_by_inverse_layer_idx=True)
    assert scaled.attention_scale(2) == pytest.approx(1 / math.sqrt(32) / 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation_function": "mish"}, "activation_function='mish'"),
        ({"n_embd": 100, "n_head": 3}, "n_embd=100 is not divisible by n_head=3"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        (
            {"architectures": ["GPT2ForSequenceClassification"]},
            "GPT2ForSequenceClassification",
        ),
    ],
)
def test_unsupported_values_are_refused_by_name(overrides, message):
    cfg = hf()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    with pytest.raises(UnsupportedGPT2Config, match=message.replace("(", r"\(")):
        validate_hf_config(cfg)


def test_the_graph_formulas_are_the_supported_activations():
    """One list: a config is accepted exactly when its activation has a
    graph formula, and each is one of transformers' names."""
    from transformers.activations import ACT2FN

    from gpt2_lmhead_model.layers import ACTIVATIONS

    for name in ACTIVATIONS:
        assert name in ACT2FN
        validate_hf_config(hf(activation_function=name))
    for name in set(ACT2FN) - set(ACTIVATIONS):
        with pytest.raises(UnsupportedGPT2Config, match="activation_function"):
            validate_hf_config(hf(activation_function=name))


class _ModelConfig:
    def __init__(self, max_length):
        self.max_length = max_length


def test_context_window_is_n_positions():
    cfg = hf(n_positions=256)
    assert GPT2Config.calculate_max_seq_len(cfg, _ModelConfig(None)) == 256
    assert GPT2Config.calculate_max_seq_len(cfg, _ModelConfig(200)) == 200
    with pytest.raises(UnsupportedGPT2Config, match="n_positions=256"):
        GPT2Config.calculate_max_seq_len(cfg, _ModelConfig(300))


def test_a_kv_cache_of_another_dtype_is_refused_naming_the_flag():
    from max.dtype import DType

    check_kv_cache_dtype(DType.bfloat16, DType.bfloat16, None)
    with pytest.raises(UnsupportedGPT2Config, match="--kv-cache-format float8"):
        check_kv_cache_dtype(DType.float8_e4m3fn, DType.bfloat16, "float8_e4m3fn")
