"""Hugging Face GPT-2 checkpoints -> GGUF files in llama.cpp's GPT-2 layout.

What llama.cpp's `convert_hf_to_gguf.py` (GPT2Model) writes, tensor for
tensor and key for key, so the files load in llama.cpp as well as in this
project's MAX architecture (`gpt2_lmhead_model.gguf_weights`), then
quantized the way `llama-quantize` would without an importance matrix
(`gguf_quants`), because `convert_hf_to_gguf.py` itself cannot write
K-quants. On top of llama.cpp's keys the file records the GPT-2 config
values llama.cpp assumes rather than stores (activation, attention scaling)
so that a loader can honour or refuse them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from .gguf_quants import quantize

ENCODINGS = ("f32", "q4_0", "q4_k", "q6_k", "q4_k_m")

# general.file_type: llama.cpp's name for the file's dominant encoding. The
# plain q4_k file is labelled Q4_K_S, the nearest ftype llama.cpp has.
FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_k": LlamaFileType.MOSTLY_Q4_K_S,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
}
_MATRIX_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_k": GGMLQuantizationType.Q4_K,
    "q6_k": GGMLQuantizationType.Q6_K,
    "q4_k_m": GGMLQuantizationType.Q4_K,
}

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2]
EOT = "<|endoftext|>"
# HF's Conv1D stores these `[in, out]`; GGUF (like nn.Linear) wants `[out, in]`.
_CONV1D = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Causal-mask buffers some GPT-2 checkpoints carry; not weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def write_gguf(checkpoint_dir: Path, out_path: Path, encoding: str) -> Path:
    """Converts a GPT-2 checkpoint directory to a GGUF file; returns its path.

    Reads `config.json`, every `*.safetensors` file and the tokenizer's
    `vocab.json` / `merges.txt`. `encoding` is one of `ENCODINGS`.
    """
    if encoding not in ENCODINGS:
        raise ValueError(
            f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}"
        )
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    hp = gpt2_hyperparameters(
        json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8"))
    )
    tensors = _gguf_tensors(_read_safetensors(checkpoint_dir), hp)
    tokens, token_types, merges, eot = _read_tokenizer(checkpoint_dir, hp["vocab_size"])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_path, ARCH, use_temp_file=True)
    writer.add_name(checkpoint_dir.resolve().name)
    writer.add_file_type(FILE_TYPES[encoding])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(hp["n_positions"])
    writer.add_embedding_length(hp["n_embd"])
    writer.add_feed_forward_length(hp["n_inner"])
    writer.add_block_count(hp["n_layer"])
    writer.add_head_count(hp["n_head"])
    writer.add_layer_norm_eps(hp["layer_norm_epsilon"])
    # Not llama.cpp's: it assumes GPT-2's defaults for these.
    writer.add_string(f"{ARCH}.activation_function", hp["activation_function"])
    writer.add_bool(f"{ARCH}.scale_attn_weights", hp["scale_attn_weights"])
    writer.add_bool(
        f"{ARCH}.scale_attn_by_inverse_layer_idx",
        hp["scale_attn_by_inverse_layer_idx"],
    )

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(hp["bos_token_id"] if "bos_token_id" in hp else eot)
    writer.add_eos_token_id(hp["eos_token_id"] if "eos_token_id" in hp else eot)
    writer.add_unk_token_id(eot)
    # GPT-2's tokenizer adds no BOS; say so rather than leave it to defaults.
    writer.add_add_bos_token(False)

    # Tensors go to a spooled temp file as they are encoded, so only one is
    # in memory at a time. A tied head is token_embd's array: encoded once.
    embd = tensors["token_embd.weight"]
    embd_encoded: dict[GGMLQuantizationType, np.ndarray] = {}
    for name, array in tensors.items():
        qtype = tensor_type(name, array.shape, encoding, hp["n_layer"])
        if array is embd:
            if qtype not in embd_encoded:
                embd_encoded[qtype] = quantize(array, qtype)
            data = embd_encoded[qtype]
        else:
            data = quantize(array, qtype)
        writer.add_tensor(name, np.ascontiguousarray(data), raw_dtype=qtype)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out_path


def tensor_type(
    name: str, shape: tuple[int, ...], encoding: str, n_layer: int
) -> GGMLQuantizationType:
    """The ggml type `write_gguf` stores GGUF tensor `name` in.

    As llama.cpp: vectors (norms, biases) and `position_embd` stay F32, the
    2-D matrices take the encoding. `q4_0`, `q4_k` and `q6_k` are pure (one
    type for every matrix, so a file exercises one kernel); llama-quantize
    would also put `output.weight` in Q6_K for those.
    """
    if len(shape) != 2 or name == "position_embd.weight" or encoding == "f32":
        return GGMLQuantizationType.F32
    qtype = _MATRIX_TYPES[encoding]
    if encoding == "q4_k_m" and _q4_k_m_wants_q6_k(name, n_layer):
        qtype = GGMLQuantizationType.Q6_K
    # A row that is not whole blocks: Q8_0 (32-value blocks) if it fits, else
    # F32. llama.cpp also falls back, to Q8_0 for Q6_K and the output head
    # but to Q5_0 for Q4_K, which MAX has no kernel for; and to F16, not F32.
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    if shape[-1] % gguf.GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0] == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F32


def _q4_k_m_wants_q6_k(name: str, n_layer: int) -> bool:
    """llama.cpp's Q4_K_M (`llama_tensor_get_type`), cut to MAX's kernels.

    Q4_K everywhere except Q6_K for `output.weight` and for `ffn_down` in
    the layers llama.cpp's `use_more_bits` picks: the first and last eighth
    and every third layer between. llama.cpp would also lift `attn_qkv` to
    Q5_K, which MAX has no kernel for (and this module no quantizer), so it
    stays Q4_K.
    """
    if name == "output.weight":
        return True
    if not name.endswith(".ffn_down.weight"):
        return False
    layer = int(name.split(".")[1])
    return (
        layer < n_layer // 8
        or layer >= 7 * n_layer // 8
        or (layer - n_layer // 8) % 3 == 2
    )


def gpt2_hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's values, with `transformers.GPT2Config`'s defaults."""
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"config.json model_type is {model_type!r}, not 'gpt2'")
    n_embd = int(config.get("n_embd", 768))
    hp: dict[str, Any] = {
        "vocab_size": int(config.get("vocab_size", 50257)),
        "n_positions": int(config.get("n_positions", 1024)),
        "n_embd": n_embd,
        "n_head": int(config.get("n_head", 12)),
        "n_layer": int(config.get("n_layer", 12)),
        "n_inner": int(config.get("n_inner") or 4 * n_embd),
        "layer_norm_epsilon": float(config.get("layer_norm_epsilon", 1e-5)),
        "activation_function": str(config.get("activation_function", "gelu_new")),
        "scale_attn_weights": bool(config.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": bool(
            config.get("scale_attn_by_inverse_layer_idx", False)
        ),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
    }
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(config.get(key), int):
            hp[key] = config[key]
    return hp


def _read_safetensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32, by GPT-2 name (no
    `transformer.` prefix, no mask buffers), memory-mapped where possible."""
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {checkpoint_dir}")
    out: dict[str, np.ndarray] = {}
    for path in files:
        for stored, tensor in gguf.utility.SafetensorsLocal(path).tensors.items():
            name = stored.removeprefix("transformer.")
            if name.endswith(_BUFFERS):
                continue
            if name in out:
                raise ValueError(f"tensor {name} appears twice in {checkpoint_dir}")
            raw = tensor.mmap_bytes()
            if tensor.dtype == "F32":
                array = raw.view("<f4")
            elif tensor.dtype == "F16":
                array = raw.view("<f2").astype(np.float32)
            elif tensor.dtype == "BF16":
                array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                raise ValueError(
                    f"tensor {stored} in {path.name} is {tensor.dtype}; "
                    "expected F32, F16 or BF16"
                )
            out[name] = array.reshape(tensor.shape)
    return out


def _gguf_tensors(
    hf: Mapping[str, np.ndarray], hp: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """GGUF name -> array `[out, in]` (a view; nothing is copied yet), in
    llama.cpp's order; refuses missing, unexpected or misshapen tensors,
    naming them."""
    e, ff, n_layer = hp["n_embd"], hp["n_inner"], hp["n_layer"]
    want: dict[str, tuple[int, ...]] = {
        "wte.weight": (hp["vocab_size"], e),
        "wpe.weight": (hp["n_positions"], e),
    }
    for i in range(n_layer):
        block = {
            "ln_1.weight": (e,),
            "ln_1.bias": (e,),
            "attn.c_attn.weight": (3 * e, e),
            "attn.c_attn.bias": (3 * e,),
            "attn.c_proj.weight": (e, e),
            "attn.c_proj.bias": (e,),
            "ln_2.weight": (e,),
            "ln_2.bias": (e,),
            "mlp.c_fc.weight": (ff, e),
            "mlp.c_fc.bias": (ff,),
            "mlp.c_proj.weight": (e, ff),
            "mlp.c_proj.bias": (e,),
        }
        want.update({f"h.{i}.{k}": v for k, v in block.items()})
    want["ln_f.weight"] = (e,)
    want["ln_f.bias"] = (e,)
    tied = hp["tie_word_embeddings"]
    if not tied:
        want["lm_head.weight"] = (hp["vocab_size"], e)

    arrays: dict[str, np.ndarray] = {}
    problems = []
    for name, array in hf.items():
        if name == "lm_head.weight" and tied:
            continue  # a tied head is wte; llama.cpp writes wte's copy
        if name not in want:
            problems.append(f"unexpected tensor {name} {list(array.shape)}")
            continue
        if name.endswith(_CONV1D) and array.ndim == 2:
            array = array.T
        if array.shape != want[name]:
            problems.append(
                f"tensor {name} is {list(array.shape)} (as [out, in]), "
                f"config.json implies {list(want[name])}"
            )
        arrays[name] = array
    problems += [f"missing tensor {name}" for name in want if name not in hf]
    if problems:
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(
            f"checkpoint does not match its config.json: {'; '.join(problems[:8])}"
            f"{more}"
        )

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layer)
    out = {}
    for name in want:
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        out[gguf_name] = arrays[name]
    if tied:
        out["output.weight"] = out["token_embd.weight"]
    return out


def _read_tokenizer(
    checkpoint_dir: Path, vocab_size: int
) -> tuple[list[str], list[gguf.TokenType], list[str], int]:
    """(tokens in id order, their types, BPE merges, the `<|endoftext|>` id),
    as llama.cpp's converter reads a GPT-2 tokenizer: ids the tokenizer lacks
    up to `vocab_size` become `[PAD{id}]` (user-defined) tokens."""
    vocab: dict[str, int] = json.loads(
        (checkpoint_dir / "vocab.json").read_text(encoding="utf-8")
    )
    by_id = {i: token for token, i in vocab.items()}
    if len(by_id) != len(vocab) or max(by_id) >= vocab_size:
        raise ValueError(
            f"vocab.json holds ids up to {max(by_id)} (some repeated) or beyond "
            f"config.json's vocab_size {vocab_size}"
        )
    if EOT not in vocab:
        raise ValueError(f"vocab.json has no {EOT} token")
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(
                gguf.TokenType.CONTROL if token == EOT else gguf.TokenType.NORMAL
            )

    # As gguf.SpecialVocab reads merges.txt: a leading '#version' line is
    # skipped, every other non-empty line is two space-separated tokens.
    merges = []
    text = (checkpoint_dir / "merges.txt").read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n"), start=1):
        parts = line.split()
        if not parts or (number == 1 and line.startswith("#")):
            continue
        if len(parts) != 2:
            raise ValueError(f"merges.txt line {number} is not two tokens: {line!r}")
        merges.append(f"{parts[0]} {parts[1]}")
    return tokens, types, merges, vocab[EOT]
