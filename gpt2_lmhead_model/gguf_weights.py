"""llama.cpp's GPT-2 GGUF files -> the graph's weights.

A GGUF GPT-2 differs from a Hugging Face checkpoint in three ways:
- names: llama.cpp's (`token_embd`, `blk.N.attn_qkv`, `ffn_up`, ...);
- layout: matrices are already `[out, in]`, as a `Linear` wants them;
- encodings: tensors may be ggml blocks or half floats. They are handed on
  as stored (`StoredTensor`); `routing` decides how each matrix runs.
The file's metadata must agree with `config.json` and its tensors with
both; anything else is refused, naming the key or tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np
from max.dtype import DType
from max.graph.quantization import QuantizationEncoding
from max.graph.weights import Weights
from max.pipelines.lib import PipelineConfig
from transformers import AutoConfig

from .formats import StoredTensor
from .model_config import hyperparameters
from .weight_adapters import (
    CheckpointMismatch,
    Dims,
    graph_weight_shapes,
    refuse_mismatches,
)

# llama.cpp's tensor names (convert_hf_to_gguf.py, GPT2Model) -> GPT-2's.
_TOP_LEVEL = {
    "token_embd": "wte",
    "position_embd": "wpe",
    "output_norm": "ln_f",
    "output": "lm_head",
}
_PER_BLOCK = {
    "attn_norm": "ln_1",
    "attn_qkv": "attn.c_attn",
    "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
_GGUF_NAME = re.compile(r"(?:blk\.(\d+)\.)?([a-z_]+)\.(weight|bias)")

# The ggml types MAX's `--quantization-encoding` has a name for (what
# `gpt2-max unpack` tells MAX a file holds; the graph then computes in
# float32, and `routing` decides per matrix how each runs).
KERNEL_ENCODINGS = {
    gguf.GGMLQuantizationType.Q4_0: QuantizationEncoding.Q4_0,
    gguf.GGMLQuantizationType.Q4_K: QuantizationEncoding.Q4_K,
    gguf.GGMLQuantizationType.Q6_K: QuantizationEncoding.Q6_K,
}

# Plain floats: handed on as arrays (bfloat16 as its raw 16-bit words).
FLOATS = {
    gguf.GGMLQuantizationType.F32: (DType.float32, np.float32),
    gguf.GGMLQuantizationType.F16: (DType.float16, np.float16),
    gguf.GGMLQuantizationType.BF16: (DType.bfloat16, np.uint16),
}

# llama.cpp's metadata keys -> config.json's names. The last three are not
# llama.cpp's (it assumes GPT-2's defaults); `gpt2-max convert` writes them.
METADATA_KEYS = {
    "gpt2.context_length": "n_positions",
    "gpt2.embedding_length": "n_embd",
    "gpt2.feed_forward_length": "n_inner",
    "gpt2.block_count": "n_layer",
    "gpt2.attention.head_count": "n_head",
    "gpt2.attention.layer_norm_epsilon": "layer_norm_epsilon",
    "gpt2.activation_function": "activation_function",
    "gpt2.scale_attn_weights": "scale_attn_weights",
    "gpt2.scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
}
REQUIRED_METADATA = list(METADATA_KEYS)[:6]


def gpt2_name(gguf_name: str) -> str | None:
    """GPT-2's name for a llama.cpp GPT-2 tensor; None if it is not one."""
    match = _GGUF_NAME.fullmatch(gguf_name)
    if match is None:
        return None
    layer, part, kind = match.groups()
    if layer is None and part in _TOP_LEVEL:
        return f"{_TOP_LEVEL[part]}.{kind}"
    if layer is not None and part in _PER_BLOCK:
        return f"h.{int(layer)}.{_PER_BLOCK[part]}.{kind}"
    return None


def gguf_name(name: str) -> str:
    """llama.cpp's name for a GPT-2 tensor (the inverse of `gpt2_name`)."""
    match = re.fullmatch(r"(?:h\.(\d+)\.)?(.+)\.(weight|bias)", name)
    if match is None:
        raise KeyError(name)
    layer, part, kind = match.groups()
    table = _TOP_LEVEL if layer is None else _PER_BLOCK
    short = next(k for k, v in table.items() if v == part)
    return f"{short}.{kind}" if layer is None else f"blk.{layer}.{short}.{kind}"


def check_metadata(metadata: Mapping[str, Any], hf_config: AutoConfig) -> None:
    """Refuses a file whose metadata contradicts `config.json`."""
    arch = metadata.get("general.architecture")
    if arch != "gpt2":
        raise CheckpointMismatch(
            f"GGUF general.architecture is {arch!r}; this architecture serves "
            "llama.cpp's 'gpt2' files"
        )
    for key in REQUIRED_METADATA:
        if key not in metadata:
            raise CheckpointMismatch(f"GGUF metadata has no {key}")
    hp = hyperparameters(hf_config)
    for key, name in METADATA_KEYS.items():
        if key not in metadata:
            continue
        found, want = metadata[key], hp[name]
        same = (
            math.isclose(float(found), want, rel_tol=1e-6)
            if isinstance(want, float)
            else found == want
        )
        if not same:
            raise CheckpointMismatch(
                f"GGUF metadata {key}={found!r} contradicts config.json {name}={want!r}"
            )


def expected_shapes(hf_config: AutoConfig) -> dict[str, Dims]:
    """Every tensor a GGUF GPT-2 holds, by GGUF name, in `[rows, cols]`.

    `output.weight` is listed even for a tied checkpoint: llama.cpp writes
    the head out (it is then optional).
    """
    shapes = graph_weight_shapes(hf_config)
    shapes.setdefault("lm_head.weight", shapes["wte.weight"])
    return {gguf_name(name): shape for name, shape in shapes.items()}


def plan(stored: Mapping[str, Dims], hf_config: AutoConfig) -> dict[str, str]:
    """GGUF name -> graph name, or one error naming every problem."""
    expected = expected_shapes(hf_config)
    tied = bool(hyperparameters(hf_config)["tie_word_embeddings"])
    problems = []
    for name, shape in stored.items():
        if name not in expected:
            problems.append(f"unexpected tensor {name} {list(shape)}")
        elif tuple(shape) != expected[name]:
            problems.append(
                f"tensor {name} has shape {list(shape)}, expected "
                f"{list(expected[name])}"
            )
    for name, shape in expected.items():
        if name not in stored and not (name == "output.weight" and tied):
            problems.append(f"missing tensor {name} (expected {list(shape)})")
    refuse_mismatches("GGUF file", problems)
    return {name: gpt2_name(name) or name for name in stored}


def _rows_cols(tensor: gguf.ReaderTensor) -> Dims:
    # GGUF stores dims innermost first.
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def stored_tensor(tensor: gguf.ReaderTensor, name: str) -> StoredTensor:
    """A file tensor under its graph name, as stored (no copy)."""
    shape = _rows_cols(tensor)
    if tensor.tensor_type in FLOATS:
        dtype, np_type = FLOATS[tensor.tensor_type]
        array = np.asarray(tensor.data).view(np_type).reshape(shape)
        return StoredTensor(name, array, dtype, shape)
    return StoredTensor(name, tensor.data, DType.uint8, shape, tensor.tensor_type)


def adapt_tensors(
    tensors: Mapping[str, gguf.ReaderTensor], hf_config: AutoConfig
) -> dict[str, StoredTensor]:
    """Every tensor under its graph name, checked against `config.json`."""
    targets = plan({k: _rows_cols(t) for k, t in tensors.items()}, hf_config)
    return {
        target: stored_tensor(tensors[source], target)
        for source, target in targets.items()
    }


def metadata_of(reader: gguf.GGUFReader) -> dict[str, Any]:
    """The scalar metadata of a GGUF file (arrays, such as the vocabulary,
    left out)."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY
    }


def convert_gguf_state_dict(
    state_dict: Mapping[str, Weights],
    huggingface_config: AutoConfig,
    pipeline_config: PipelineConfig,
    **unused_kwargs: object,
) -> dict[str, StoredTensor]:
    """The registered GGUF adapter."""
    del pipeline_config  # how each matrix runs is `routing`'s to decide
    # MAX's GGUFWeights (26.7.0) keeps its reader and raw tensors private;
    # the raw tensor carries the ggml type of encodings MAX cannot load.
    weights = list(state_dict.values())
    if not weights:
        raise CheckpointMismatch("GGUF file holds no tensors")
    check_metadata(metadata_of(weights[0]._reader), huggingface_config)  # type: ignore[attr-defined]
    tensors = {name: w._raw_tensor() for name, w in state_dict.items()}  # type: ignore[attr-defined]
    return adapt_tensors(tensors, huggingface_config)
