"""The fixture checkpoints: every parameter informative, activations sane.

A checkpoint whose biases are 0 and whose LayerNorms are the identity
(transformers' default initialisation) hides a dropped bias or swapped
norms from every parity test; these checks keep the fixtures from sliding
back to that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import GPT2LMHeadModel

from gpt2_max.checkpoints import write_checkpoint


@pytest.fixture(scope="module", params=["distilgpt2", "variant"])
def written(request, tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return path, load_file(str(path / "model.safetensors"))


def _norms_and_biases(tensors):
    out = {}
    for name, array in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers, not parameters
        if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f"):
            out[name] = array
    return out


def test_every_bias_and_norm_is_informative(written):
    _, tensors = written
    params = _norms_and_biases(tensors)
    n_layer = len({n.split(".")[1] for n in params if n.startswith("h.")})
    # Per block: ln_1, ln_2 (weight, bias) and four linear biases; ln_f.
    assert len(params) == n_layer * 8 + 2
    for name, array in params.items():
        if name.endswith(".weight"):  # LayerNorm gains: away from 1, positive
            assert np.abs(array - 1).mean() > 0.1, name
            assert array.min() > 0, name
        else:
            assert np.abs(array).mean() > 0.03, name
            assert np.abs(array).max() < 1.0, name
    for i in range(n_layer):  # two norms that could be swapped must differ
        for kind in ("weight", "bias"):
            a, b = params[f"h.{i}.ln_1.{kind}"], params[f"h.{i}.ln_2.{kind}"]
            assert not np.allclose(a, b)


def test_activations_stay_in_a_realistic_range(written, tokenizer):
    path, _ = written
    model = GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor(
        [tokenizer("The harbour was quiet in the early morning").input_ids]
    )
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
    for layer, hidden in enumerate(out.hidden_states):
        assert torch.isfinite(hidden).all(), layer
        assert 0.01 < hidden.std().item() < 20, (layer, hidden.std().item())
    logits = out.logits[0]
    # Logits spread enough that greedy choices are not ties of rounding.
    assert logits.std(dim=-1).min().item() > 0.1
    top2 = logits.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).max().item() > 1e-3
