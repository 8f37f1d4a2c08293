"""The peers our numbers are judged against, run on the same machine.

- MAX's built-in `LlamaForCausalLM` with the same weight bytes as the GPT-2
  checkpoint: same engine, same kernels, so it shows whether our
  architecture is as efficient as MAX's production ones.
- `transformers` on PyTorch (CPU, KV cache), what a user would otherwise run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gpt2_max.checkpoints import PRESETS, write_tokenizer


def llama_config_like(gpt2: dict[str, Any]) -> dict[str, Any]:
    """A Llama whose weights have the GPT-2 checkpoint's bytes.

    GPT-2's MLP is 2 x n_embd x 4n_embd; a gated MLP of width 8/3 n_embd has
    3 x n_embd x (8/3 n_embd), the same. Rotary positions replace `wpe`
    (n_positions x n_embd, 0.8 M of DistilGPT2's 82 M parameters).
    """
    e = int(gpt2["n_embd"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": e,
        "intermediate_size": (gpt2.get("n_inner") or 4 * e) * 2 // 3,
        "num_hidden_layers": int(gpt2["n_layer"]),
        "num_attention_heads": int(gpt2["n_head"]),
        "num_key_value_heads": int(gpt2["n_head"]),
        "vocab_size": int(gpt2["vocab_size"]),
        "max_position_embeddings": int(gpt2["n_positions"]),
        "rms_norm_eps": float(gpt2["layer_norm_epsilon"]),
        "tie_word_embeddings": bool(gpt2.get("tie_word_embeddings", True)),
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    }


def write_llama_checkpoint(
    out_dir: str | Path, gpt2_preset: str, seed: int = 0
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    gpt2 = PRESETS[gpt2_preset]
    torch.manual_seed(seed)
    config = LlamaConfig(**llama_config_like(gpt2))
    LlamaForCausalLM(config).eval().save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, model_max_length=int(gpt2["n_positions"]))
    # A llama config would otherwise send AutoTokenizer to sentencepiece.
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "GPT2Tokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return out


def parameter_bytes(checkpoint: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in Path(checkpoint).glob("*.safetensors"):
        with safe_open(str(path), "np") as f:
            for key in f.keys():
                if key.endswith(("attn.bias", "attn.masked_bias")):
                    continue  # mask buffers, not parameters
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += 4 * n
    return total


def transformers_throughput(
    checkpoint: str | Path,
    prompts: list[list[int]],
    max_tokens: int,
    threads: int,
) -> dict[str, float]:
    """Greedy `generate` of `max_tokens` for all prompts as one batch.

    Prompts have equal length, so no padding is involved.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=50256,
        use_cache=True,
    )
    with torch.inference_mode():
        model.generate(
            ids[:, :8],
            attention_mask=mask[:, :8],
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=50256,
        )
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        wall = time.perf_counter() - start
    generated = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return {
        "batch": len(prompts),
        "wall_seconds": wall,
        "tokens_per_second": generated / wall,
    }
