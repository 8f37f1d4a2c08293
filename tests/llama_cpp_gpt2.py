"""llama.cpp's GPT-2 tensor names and layouts, written out from its
published table (`gguf-py/gguf/tensor_mapping.py`, MODEL_ARCH.GPT2), with
no code shared with the converter or the loader under test: a mapping bug
there cannot cancel out against the same bug here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np

TOP_NAMES = {
    "wte": "token_embd",
    "wpe": "position_embd",
    "ln_f": "output_norm",
    "lm_head": "output",
}
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
# GPT-2's Conv1D modules store [in, out]; GGUF stores every matrix [out, in].
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def gguf_name(name: str) -> str:
    """llama.cpp's name for a GPT-2 tensor (`h.0.ln_1.weight`)."""
    part, kind = name.rsplit(".", 1)
    if part.startswith("h."):
        _, layer, rest = part.split(".", 2)
        return f"blk.{layer}.{BLOCK_NAMES[rest]}.{kind}"
    return f"{TOP_NAMES[part]}.{kind}"


def gpt2_name(name: str) -> str:
    """GPT-2's name for a llama.cpp tensor (`blk.0.attn_norm.weight`)."""
    part, kind = name.rsplit(".", 1)
    if part.startswith("blk."):
        _, layer, rest = part.split(".", 2)
        block = {v: k for k, v in BLOCK_NAMES.items()}
        return f"h.{layer}.{block[rest]}.{kind}"
    return f"{ {v: k for k, v in TOP_NAMES.items()}[part] }.{kind}"


def is_conv1d_weight(name: str) -> bool:
    return name.startswith("h.") and name.endswith(tuple(f"{c}.weight" for c in CONV1D))


def rows_cols(tensor: gguf.ReaderTensor) -> tuple[int, ...]:
    """A GGUF tensor's shape, outermost first (GGUF lists it innermost first)."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def dequantized_checkpoint(gguf_path: Path, source: Path, out: Path) -> Path:
    """The oracle for a GGUF file: its own values, dequantized by `gguf`'s
    reader, as a transformers checkpoint (config and tokenizer from
    `source`). The head is untied when the file stores `output.weight`."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for tensor in gguf.GGUFReader(str(gguf_path)).tensors:
        name = gpt2_name(tensor.name)
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(rows_cols(tensor))
        if is_conv1d_weight(name):
            array = array.T
        key = name if name == "lm_head.weight" else "transformer." + name
        tensors[key] = np.ascontiguousarray(array)
    save_file(tensors, str(out / "model.safetensors"), {"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    (out / "config.json").write_text(json.dumps(config))
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(source / f, out / f)
    return out
