"""A bare GGUF file -> the `config.json` and tokenizer MAX needs beside it.

GPT-2 GGUF repositories ship only `.gguf` files, but `max serve` reads the
model's config and tokenizer from a Hugging Face-style `--model-path`
directory. Everything those files hold is in the GGUF metadata: the
hyperparameters (`gpt2.*`), the vocabulary and merges (`tokenizer.ggml.*`)
and the special token ids. The weights stay in the GGUF file, passed as
`--weight-path`. The loader checks the file's tensors against the config
written here as it checks any GGUF file, so metadata that contradicts the
tensors is refused (here already, naming the tensor).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from max.pipelines.modeling.config_enums import parse_supported_encoding_from_file_name
from transformers import GPT2Config

from gpt2_lmhead_model.gguf_weights import (
    KERNEL_ENCODINGS,
    METADATA_KEYS,
    REQUIRED_METADATA,
    _rows_cols,
    metadata_of,
    plan,
)
from gpt2_lmhead_model.weight_adapters import CheckpointMismatch

from .tokenizer_files import from_gguf_metadata, write_vocab_and_merges

# What llama.cpp assumes for a GPT-2 when the file does not say (the last
# three METADATA_KEYS are written by `gpt2-max convert` only).
_LLAMA_CPP_DEFAULTS = {
    "activation_function": "gelu_new",
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
}

_SPECIAL_IDS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
}


@dataclass
class Unpacked:
    model_dir: Path  # config.json and tokenizer files
    weight_path: Path  # the GGUF file (or `weights_link`'s link to it), absolute
    encoding: str  # --quantization-encoding for it

    def serve_flags(self) -> list[str]:
        return [
            "--model-path", str(self.model_dir),
            "--weight-path", str(self.weight_path),
            "--quantization-encoding", self.encoding,
        ]  # fmt: skip


def unpack(gguf_path: str | Path, out_dir: str | Path) -> Unpacked:
    """Writes `out_dir/config.json` and the tokenizer files from the file's
    metadata; refuses a file that is not a GPT-2 or whose metadata and
    tensors disagree."""
    path = Path(gguf_path).resolve()
    reader = gguf.GGUFReader(str(path))
    metadata = metadata_of(reader)
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_metadata(metadata, tensors)
    plan(
        {name: _rows_cols(t) for name, t in tensors.items()}, GPT2Config(**config)
    )  # every tensor present and shaped as the metadata says, or refused

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointMismatch(
            f"GGUF tokenizer.ggml.model is {model!r}; GPT-2's BPE is 'gpt2'"
        )
    tokens = _array(reader, "tokenizer.ggml.tokens")
    if len(tokens) != config["vocab_size"]:
        raise CheckpointMismatch(
            f"GGUF tokenizer.ggml.tokens has {len(tokens)} tokens, "
            f"token_embd.weight {config['vocab_size']} rows"
        )
    tokenizer = from_gguf_metadata(
        tokens,
        _array(reader, "tokenizer.ggml.token_type", required=False),
        _array(reader, "tokenizer.ggml.merges"),
    )
    special = {}
    for name, key in _SPECIAL_IDS.items():
        if key in metadata:
            if not 0 <= int(metadata[key]) < len(tokens):
                raise CheckpointMismatch(
                    f"GGUF {key}={metadata[key]} is not a token id "
                    f"(0..{len(tokens) - 1})"
                )
            special[f"{name}_token"] = tokens[int(metadata[key])]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_vocab_and_merges(
        tokenizer, out, {"model_max_length": config["n_positions"], **special}
    )
    encoding = main_encoding(reader)
    return Unpacked(out.resolve(), weights_link(path, out, encoding), encoding)


def weights_link(path: Path, out: Path, encoding: str) -> Path:
    """`path`, or a link to it in `out` whose name MAX cannot misread.

    MAX 26.7 guesses an encoding from the weight file's name and, when it
    differs from `--quantization-encoding`, casts to it or refuses: a file
    named `*bf16*.gguf` is refused on CPU ("bfloat16 is not supported on
    this device"), though its BF16 matrices run here (half-width panels).
    """
    guessed = parse_supported_encoding_from_file_name(path.name)
    if guessed is None or guessed == encoding:
        return path
    link = out.resolve() / "weights.gguf"
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    return link


def config_from_metadata(
    metadata: dict[str, Any], tensors: dict[str, gguf.ReaderTensor]
) -> dict[str, Any]:
    """GPT-2's `config.json` from llama.cpp's keys (and ours where the file
    has them); the vocabulary size and tied head from the tensors."""
    arch = metadata.get("general.architecture")
    if arch != "gpt2":
        raise CheckpointMismatch(
            f"GGUF general.architecture is {arch!r}; this architecture serves "
            "llama.cpp's 'gpt2' files"
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointMismatch(f"GGUF metadata has no {', '.join(missing)}")
    if "token_embd.weight" not in tensors:
        raise CheckpointMismatch("GGUF file has no token_embd.weight")
    config: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        **_LLAMA_CPP_DEFAULTS,
    }
    for key, name in METADATA_KEYS.items():
        if key in metadata:
            config[name] = metadata[key]
    # Stored as float32: its shortest decimal (1e-05, not 9.99999974e-06).
    config["layer_norm_epsilon"] = float(str(np.float32(config["layer_norm_epsilon"])))
    config["n_ctx"] = config["n_positions"]
    config["vocab_size"] = _rows_cols(tensors["token_embd.weight"])[0]
    config["tie_word_embeddings"] = "output.weight" not in tensors
    for name in ("bos", "eos"):
        key = _SPECIAL_IDS[name]
        if key in metadata:
            config[f"{name}_token_id"] = int(metadata[key])
    return config


def main_encoding(reader: gguf.GGUFReader) -> str:
    """The `--quantization-encoding` of a file: the ggml encoding most of
    its matrices in MAX's encodings use (`q4_k` for a Q4_K_M file), else
    `float32`, the graph's float type. That is right for Q8_0, F16 and
    BF16 files too: MAX 26.7's `--quantization-encoding` has no q8_0 (nor
    a float16 on CPU), and on CPU their matrices are routed per tensor to
    this package's panel kernels (`gpt2_lmhead_model.routing`)."""
    kinds = Counter(
        KERNEL_ENCODINGS[t.tensor_type].name.lower()
        for t in reader.tensors
        if t.tensor_type in KERNEL_ENCODINGS
    )
    return kinds.most_common(1)[0][0] if kinds else "float32"


def _array(reader: gguf.GGUFReader, key: str, *, required: bool = True) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise CheckpointMismatch(f"GGUF metadata has no {key}")
        return None
    return field.contents()
