"""Hugging Face GPT-2 checkpoints -> GGUF files in llama.cpp's GPT-2 layout.

What llama.cpp's `convert_hf_to_gguf.py` (GPT2Model) writes, tensor for
tensor and key for key, so the files load in llama.cpp as well as in this
project's MAX architecture (`gpt2_lmhead_model.gguf_weights`). Float,
half and Q8_0 files hold what `convert_hf_to_gguf.py --outtype` writes;
Q4_0 and the K-quants are quantized the way `llama-quantize` would without
an importance matrix (`gguf_quants`), because `convert_hf_to_gguf.py`
itself cannot write K-quants. On top of llama.cpp's keys the file records
the GPT-2 config values llama.cpp assumes rather than stores (activation,
attention scaling) so that a loader can honour or refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType
from transformers import AutoConfig

from gpt2_lmhead_model.gguf_weights import gguf_name
from gpt2_lmhead_model.model_config import hyperparameters, validate_hf_config
from gpt2_lmhead_model.weight_adapters import plan_weights

from .gguf_quants import quantize
from .tokenizer_files import EOT, read_tokenizer, tokens_by_id

ENCODINGS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m")

# general.file_type: llama.cpp's name for the file's dominant encoding. The
# plain q4_k file is labelled Q4_K_S, the nearest ftype llama.cpp has.
FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_k": LlamaFileType.MOSTLY_Q4_K_S,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
}
_MATRIX_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_k": GGMLQuantizationType.Q4_K,
    "q6_k": GGMLQuantizationType.Q6_K,
    "q4_k_m": GGMLQuantizationType.Q4_K,
}

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2]


def write_gguf(checkpoint_dir: Path, out_path: Path, encoding: str) -> Path:
    """Converts a GPT-2 checkpoint directory to a GGUF file; returns its path.

    Reads `config.json`, every `*.safetensors` file and the tokenizer
    (`vocab.json` / `merges.txt`, or `tokenizer.json`). `encoding` is one
    of `ENCODINGS`.
    """
    if encoding not in ENCODINGS:
        raise ValueError(
            f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}"
        )
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    hf_config = AutoConfig.from_pretrained(checkpoint_dir)
    validate_hf_config(hf_config)
    hp = hyperparameters(hf_config)
    tensors = _gguf_tensors(_read_safetensors(checkpoint_dir), hf_config)
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
    bos, eos = hf_config.bos_token_id, hf_config.eos_token_id
    writer.add_bos_token_id(bos if isinstance(bos, int) else eot)
    writer.add_eos_token_id(eos if isinstance(eos, int) else eot)
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
    2-D matrices (`token_embd` and `output` included) take the encoding;
    for `q8_0` that is `convert_hf_to_gguf.py --outtype q8_0`'s choice
    tensor for tensor. `q4_0`, `q4_k` and `q6_k` are pure (one
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


def _read_safetensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32, by stored name,
    memory-mapped where possible."""
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {checkpoint_dir}")
    out: dict[str, np.ndarray] = {}
    for path in files:
        for stored, tensor in gguf.utility.SafetensorsLocal(path).tensors.items():
            name = stored
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
    hf: Mapping[str, np.ndarray], hf_config: AutoConfig
) -> dict[str, np.ndarray]:
    """GGUF name -> array `[out, in]` (a view; nothing is copied yet).

    The architecture's own weight plan decides what goes where, so the
    file holds exactly what the MAX loader expects; a missing, unexpected
    or misshaped tensor is refused, naming it. A tied head is written out
    as `output.weight`, as llama.cpp does.
    """
    shapes = {name: tuple(array.shape) for name, array in hf.items()}
    out: dict[str, np.ndarray] = {}
    for row in plan_weights(shapes, hf_config):
        if row.target is None:
            continue  # mask buffers; an untied copy of a tied head
        array = hf[row.source]
        if row.action == "transposed":
            array = array.T
        out[gguf_name(row.target)] = array
    return out


def _read_tokenizer(
    checkpoint_dir: Path, vocab_size: int
) -> tuple[list[str], list[gguf.TokenType], list[str], int]:
    """(tokens in id order, their types, BPE merges, the `<|endoftext|>` id),
    from `vocab.json` / `merges.txt` or `tokenizer.json`."""
    tokenizer = read_tokenizer(checkpoint_dir)
    if EOT not in tokenizer.vocab:
        raise ValueError(f"the tokenizer in {checkpoint_dir} has no {EOT} token")
    tokens, types = tokens_by_id(tokenizer, vocab_size)
    return tokens, types, tokenizer.merges, tokenizer.vocab[EOT]
