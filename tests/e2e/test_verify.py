"""`gpt2-max verify`: PASS on good checkpoints, FAIL with the cause otherwise.

The broken implementations are the mistakes guides for MAX have
recommended (position embeddings left out, GPT-2's square `attn.c_proj`
Conv1D weight used without its transpose, a gated MLP built from `c_fc`),
and the ones a fused kernel makes (a bias ignored, norms swapped or
skipped, a norm's weight and bias swapped). Each must be caught with the
first differing token reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from max.dtype import DType
from max.graph import ops
from max.graph.weights import WeightsFormat
from safetensors.torch import load_file, save_file

from gpt2_lmhead_model import gpt2 as gpt2_module
from gpt2_lmhead_model import gpt2_arch
from gpt2_lmhead_model.formats import StoredTensor
from gpt2_lmhead_model.gpt2 import GPT2, GPT2MLP
from gpt2_lmhead_model.weight_adapters import adapt_weights
from gpt2_max.verify import FAIL, PASS, UNREADABLE, verify

pytestmark = pytest.mark.slow


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gpt2-max", "verify", *args],
        capture_output=True, text=True, timeout=1800, check=False,
        env={**os.environ, "MAX_SERVE_DISABLE_TELEMETRY": "1"},
    )  # fmt: skip


def test_fixture_distilgpt2_passes(checkpoints, tmp_path):
    report = tmp_path / "verdict.json"
    result = run_cli(
        "--model-path", str(checkpoints["distilgpt2"]), "--json", str(report)
    )
    assert result.returncode == PASS, result.stdout[-3000:] + result.stderr[-2000:]
    out = result.stdout
    # The mapping table names every tensor and what became of it.
    row = r"h\.0\.attn\.c_attn\.weight\s+\[768, 2304\]\s+F32\s+h\.0\.attn\.c_attn\.weight\s+\[2304, 768\]\s+transposed\s+float32 panels \(panel_linear\)"
    assert re.search(row, out), out[:3000]
    assert re.search(
        r"h\.3\.attn\.bias\s+\[1, 1, 1024, 1024\].*dropped \(causal-mask buffer\)", out
    )
    # ... and, from the routing plan, the format each matrix runs as.
    head = r"wte\.weight.*lm_head\.weight\s+\[50257, 768\]\s+tied.*float32 panels"
    assert re.search(head, out), out[:3000]
    assert "greedy tokens identical for 33 steps" in out
    assert out.rstrip().splitlines()[-1].startswith("PASS")
    verdict = json.loads(report.read_text())
    assert verdict["status"] == "PASS"
    assert all(max(p["relative_errors"]) <= 1e-4 for p in verdict["prompts"])


def test_fixture_variant_passes(checkpoints):
    lines: list[str] = []
    verdict = verify(str(checkpoints["variant"]), say=lines.append)
    assert verdict.status == PASS, "\n".join(lines)
    assert verdict.parity is not None and verdict.parity.passed


def broken(checkpoints, tmp_path, edit_weights=None, edit_config=None):
    path = tmp_path / "broken"
    shutil.copytree(checkpoints["variant"], path)
    if edit_weights:
        weights = load_file(path / "model.safetensors")
        edit_weights(weights)
        save_file(weights, path / "model.safetensors", {"format": "pt"})
    if edit_config:
        config = json.loads((path / "config.json").read_text())
        edit_config(config)
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("name", "weights", "config", "status", "cause"),
    [
        (
            "missing tensor",
            lambda w: w.pop("transformer.h.2.ln_2.bias"),
            None,
            FAIL,
            "missing: missing tensor h.2.ln_2.bias (expected [96])",
        ),
        (
            "wrong shape",
            lambda w: w.update(
                {"transformer.wpe.weight": w["transformer.wpe.weight"][:200].clone()}
            ),
            None,
            FAIL,
            "tensor transformer.wpe.weight has shape [200, 96], expected [256, 96]",
        ),
        (
            "not GPT-2",
            None,
            lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]),
            UNREADABLE,
            "architectures is ['LlamaForCausalLM']",
        ),
        (
            "unsupported activation",
            None,
            lambda c: c.update(activation_function="mish"),
            UNREADABLE,
            "activation_function='mish' is not supported",
        ),
    ],
)
def test_broken_checkpoint_fails_naming_the_cause(
    checkpoints, tmp_path, name, weights, config, status, cause
):
    path = broken(checkpoints, tmp_path, weights, config)
    result = run_cli("--model-path", str(path))
    assert result.returncode == status, result.stdout[-3000:]
    assert cause in result.stdout
    assert "FAIL" in result.stdout


def test_unreadable_path_fails(tmp_path):
    result = run_cli("--model-path", str(tmp_path / "nowhere"))
    assert result.returncode == UNREADABLE
    assert "nowhere" in result.stdout


def assert_fails_with_first_token(checkpoint, architecture=None):
    lines: list[str] = []
    verdict = verify(str(checkpoint), architecture=architecture, say=lines.append)
    text = "\n".join(lines)
    assert verdict.status == FAIL, text
    assert "FIRST DIFFERING TOKEN at step" in text, text
    assert text.splitlines()[-1].startswith("FAIL")
    assert verdict.parity is not None
    assert any(p.first_divergence is not None for p in verdict.parity.prompts)


def test_missing_position_embeddings_fail(checkpoints, monkeypatch):
    monkeypatch.setattr(GPT2, "embed", lambda self, tokens, positions: self.wte(tokens))
    assert_fails_with_first_token(checkpoints["variant"])


def with_weights_edited(edit):
    """The architecture with `edit` applied to the adapter's float32 weights
    (matrices `[out, in]`, before the routed formats pack them): a mistake
    made in how a weight is used, injected in the weight itself so the
    compiled graph is reused."""

    def adapter(state_dict, huggingface_config, pipeline_config, **kwargs):
        stored = adapt_weights(
            {name: w.data() for name, w in state_dict.items()}, huggingface_config
        )
        arrays = {name: t.float32().copy() for name, t in stored.items()}
        edit(arrays)
        return {
            name: StoredTensor(name, np.ascontiguousarray(a), DType.float32, a.shape)
            for name, a in arrays.items()
        }

    return dataclasses.replace(
        gpt2_arch, weight_adapters={WeightsFormat.safetensors: adapter}
    )


def _each(pattern, edit):
    def apply(arrays):
        names = [n for n in arrays if re.fullmatch(pattern, n)]
        assert names, pattern  # the mistake must touch something
        for name in names:
            edit(arrays, name)

    return apply


def _zero(arrays, name):
    arrays[name][...] = 0


def _swap(arrays, a, b):
    arrays[a], arrays[b] = arrays[b].copy(), arrays[a].copy()


def _swap_norms(arrays, ln_1_weight):
    for kind in ("weight", "bias"):
        _swap(
            arrays,
            ln_1_weight.replace("weight", kind),
            ln_1_weight.replace("ln_1.weight", f"ln_2.{kind}"),
        )


def _identity_affine(arrays, weight):
    arrays[weight][...] = 1
    arrays[weight.removesuffix("weight") + "bias"][...] = 0


def _swap_weight_and_bias(arrays, weight):
    _swap(arrays, weight, weight.removesuffix("weight") + "bias")


# Mistakes in how a weight is used. With transformers' default init (biases
# 0, LayerNorms the identity) the first four give the same logits as the
# real code; the fixtures' informative biases and norms must expose each.
WEIGHT_MISTAKES = {
    "c_attn.bias ignored": _each(r"h\.\d+\.attn\.c_attn\.bias", _zero),
    "attn c_proj.bias ignored": _each(r"h\.\d+\.attn\.c_proj\.bias", _zero),
    "mlp c_fc.bias ignored": _each(r"h\.\d+\.mlp\.c_fc\.bias", _zero),
    "mlp c_proj.bias ignored": _each(r"h\.\d+\.mlp\.c_proj\.bias", _zero),
    "ln_1 and ln_2 swapped": _each(r"h\.\d+\.ln_1\.weight", _swap_norms),
    "ln_f gain and bias ignored": _each(r"ln_f\.weight", _identity_affine),
    "norm weight and bias swapped": _each(
        r"(h\.\d+\.ln_[12]|ln_f)\.weight", _swap_weight_and_bias
    ),
}


@pytest.mark.parametrize("mistake", list(WEIGHT_MISTAKES))
def test_weight_use_mistake_fails(checkpoints, mistake):
    assert_fails_with_first_token(
        checkpoints["variant"], with_weights_edited(WEIGHT_MISTAKES[mistake])
    )


def test_untransposed_square_c_proj_fails(checkpoints):
    def untranspose(arrays, name):  # undo the Conv1D transpose
        arrays[name] = arrays[name].T

    assert_fails_with_first_token(
        checkpoints["variant"],
        with_weights_edited(_each(r"h\.\d+\.attn\.c_proj\.weight", untranspose)),
    )


def test_skipped_final_norm_fails(checkpoints, monkeypatch):
    real = gpt2_module.logits_postprocess

    def without_ln_f(*args, **kwargs):
        return real(*args, **{**kwargs, "norm": lambda x: x})

    monkeypatch.setattr(gpt2_module, "logits_postprocess", without_ln_f)
    assert_fails_with_first_token(checkpoints["variant"])


def test_gated_mlp_fails(checkpoints, monkeypatch):
    def gated(self, x):
        up = self.c_fc(x)  # c_fc duplicated as gate and up projection
        return self.c_proj(ops.silu(up) * up)

    monkeypatch.setattr(GPT2MLP, "__call__", gated)
    assert_fails_with_first_token(checkpoints["variant"])
