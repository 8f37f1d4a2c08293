"""The oracle for a GGUF file: its weights, dequantized, as a transformers
checkpoint.

A quantized file cannot match the float checkpoint it came from, so its
reference is `transformers` running the very values the file holds. The
head is the file's `output.weight` when it has one (as llama.cpp and this
architecture use it), so the reference is untied then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np

from gpt2_lmhead_model.gguf_weights import gpt2_name
from gpt2_lmhead_model.weight_adapters import CONV1D_WEIGHTS

from .checkpoints import write_tokenizer


def dequantized_checkpoint(
    gguf_path: str | Path, config_dir: str | Path, out_dir: str | Path
) -> Path:
    """Writes `out_dir`: config.json from `config_dir`, tokenizer files, and
    every GGUF tensor dequantized to float32 in Hugging Face's layout."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for tensor in gguf.GGUFReader(str(gguf_path)).tensors:
        name = gpt2_name(tensor.name)
        if name is None:
            raise ValueError(f"{gguf_path}: {tensor.name} is not a GPT-2 tensor")
        rows_cols = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(rows_cols)
        if CONV1D_WEIGHTS.match(name):
            array = array.T  # back to Conv1D's [in, out]
        # Named as save_pretrained names them.
        key = name if name == "lm_head.weight" else "transformer." + name
        tensors[key] = np.ascontiguousarray(array)
    save_file(tensors, str(out / "model.safetensors"), {"format": "pt"})

    config = json.loads((Path(config_dir) / "config.json").read_text())
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer_files = ("vocab.json", "merges.txt", "tokenizer_config.json")
    if all((Path(config_dir) / f).is_file() for f in tokenizer_files):
        for f in tokenizer_files:
            shutil.copyfile(Path(config_dir) / f, out / f)
    else:
        write_tokenizer(out, model_max_length=int(config["n_positions"]))
    return out
