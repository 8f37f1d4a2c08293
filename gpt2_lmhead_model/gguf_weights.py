"""llama.cpp's GPT-2 GGUF files -> the graph's weights.

A GGUF GPT-2 differs from a Hugging Face checkpoint in three ways:
- names: llama.cpp's (`token_embd`, `blk.N.attn_qkv`, `ffn_up`, ...);
- layout: matrices are already `[out, in]`, as a `Linear` wants them;
- encodings: matrices may be ggml blocks or half floats. On CPU, Q8_0,
  Q4_K and Q6_K ones are repacked for this package's panel kernels
  (`REPACKED`), and F16/BF16 ones (what llama.cpp's converter writes by
  default) stay half-width for them (`HALF_FLOATS`); Q4_0 (and Q4_K and
  Q6_K off the CPU) stay packed for MAX's quantized matmuls. Any other
  encoding (Q5_K, ..., and F16/BF16 off the CPU), and every vector, is
  dequantized at load.
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
from max.graph import Shape
from max.graph.quantization import QuantizationEncoding
from max.graph.weights import WeightData, Weights
from max.pipelines.lib import PipelineConfig
from transformers import AutoConfig

from .kernels.panels import (
    pack_panels,
    pack_q4k_panels,
    pack_q6k_panels,
    pack_q8_panels,
)
from .model_config import hyperparameters, validate_hf_config
from .weight_adapters import (
    CheckpointMismatch,
    Dims,
    from_raw_array,
    graph_weight_shapes,
    pack_panel_weights,
    panel_target,
    pipeline_target,
    refuse_mismatches,
    transpose,
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

# The ggml encodings MAX has matmul and dequantize kernels for.
KERNEL_ENCODINGS = {
    gguf.GGMLQuantizationType.Q4_0: QuantizationEncoding.Q4_0,
    gguf.GGMLQuantizationType.Q4_K: QuantizationEncoding.Q4_K,
    gguf.GGMLQuantizationType.Q6_K: QuantizationEncoding.Q6_K,
}

# MAX's CPU ggml matmuls repack weights in tiles of 32 output rows: packed
# matrices are padded to it (GPT-2's 50257-row head is the usual case).
ROW_TILE = 32

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
    validate_hf_config(hf_config)
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


def _stays_packed(target: str) -> bool:
    """The matrices that run through MAX's quantized matmul."""
    return target.endswith(".weight") and (
        target.split(".")[-2] in ("c_attn", "c_proj", "c_fc", "lm_head")
    )


def _packed(tensor: gguf.ReaderTensor, name: str) -> WeightData:
    """The ggml blocks as stored (a copy: the weights outlive the file's
    memory map), rows padded to `ROW_TILE`."""
    shape = gguf.quant_shape_to_byte_shape(list(_rows_cols(tensor)), tensor.tensor_type)
    packed = np.array(tensor.data, dtype=np.uint8, copy=True).reshape(shape)
    encoding = KERNEL_ENCODINGS[tensor.tensor_type]
    return pad_rows(WeightData(packed, name, DType.uint8, Shape(shape), encoding))


def _repack_q8_0(blocks: np.ndarray, name: str) -> dict[str, WeightData]:
    quants, scales = pack_q8_panels(blocks)
    return {
        name: WeightData.from_numpy(quants, name),
        f"{name}_scale": WeightData.from_numpy(scales, f"{name}_scale"),
    }


def _repack_q4_k(blocks: np.ndarray, name: str) -> dict[str, WeightData]:
    codes, sub_scales, super_scales = pack_q4k_panels(blocks)
    return {
        name: WeightData.from_numpy(codes, name),
        f"{name}_sub_scales": WeightData.from_numpy(sub_scales, f"{name}_sub_scales"),
        f"{name}_super_scales": WeightData.from_numpy(
            super_scales, f"{name}_super_scales"
        ),
    }


def _repack_q6_k(blocks: np.ndarray, name: str) -> dict[str, WeightData]:
    low, high, multipliers, scales = pack_q6k_panels(blocks)
    return {
        name: WeightData.from_numpy(low, name),
        f"{name}_high": WeightData.from_numpy(high, f"{name}_high"),
        f"{name}_multipliers": WeightData.from_numpy(
            multipliers, f"{name}_multipliers"
        ),
        f"{name}_scales": WeightData.from_numpy(scales, f"{name}_scales"),
    }


# The ggml encodings that run on CPU through this package's panel kernels
# (`kernels/`), repacked at load: MAX 26.7 has no Q8_0 matmul, ours for
# Q4_K is as fast as MAX's with about 30 % less logit error (per-32 rather
# than per-256 activation scales), and ours for Q6_K is faster than MAX's
# (docs/BENCHMARKS.md). Each repacking names the weight beside `<name>`
# whose presence marks it (`panel_ggml_weights`).
REPACKED = {
    gguf.GGMLQuantizationType.Q8_0: ("q8_0", "_scale", _repack_q8_0),
    gguf.GGMLQuantizationType.Q4_K: ("q4_k", "_super_scales", _repack_q4_k),
    gguf.GGMLQuantizationType.Q6_K: ("q6_k", "_multipliers", _repack_q6_k),
}


# Half-float matrices the panel kernels stream as they are on CPU (half the
# bytes of float32, widened exactly in registers): ggml type -> the dtype
# and the name `GPT2Config.panel_ggml_weights` gives them.
HALF_FLOATS = {
    gguf.GGMLQuantizationType.F16: (DType.float16, "f16"),
    gguf.GGMLQuantizationType.BF16: (DType.bfloat16, "bf16"),
}


def panel_ggml_weights(state_dict: Mapping[str, object]) -> dict[str, str]:
    """Graph weight name -> ggml encoding, for the matrices `adapt_tensors`
    repacked and the half-float ones packed in panels (see
    `GPT2Config.panel_ggml_weights`)."""
    found = {}
    for encoding, marker, _ in REPACKED.values():
        for name in state_dict:
            if name.endswith(".weight" + marker):
                found[name.removesuffix(marker)] = encoding
    half = {dtype: encoding for dtype, encoding in HALF_FLOATS.values()}
    for name, data in state_dict.items():
        dtype, shape = getattr(data, "dtype", None), getattr(data, "shape", ())
        if dtype in half and len(shape) == 3 and name.endswith(".weight"):
            found[name] = half[dtype]  # `[panels, K, PANEL]`
    return found


def _repacked(tensor: gguf.ReaderTensor, name: str) -> dict[str, WeightData]:
    """A matrix as its panel kernel reads it (see `REPACKED`)."""
    rows = _rows_cols(tensor)[0]
    blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1)
    return REPACKED[tensor.tensor_type][2](blocks, name)


def _half(tensor: gguf.ReaderTensor, name: str) -> WeightData:
    """An F16/BF16 matrix in panels, in its own dtype (bfloat16 as its raw
    16-bit words): columns of the panels are the file's rows."""
    dtype, _ = HALF_FLOATS[tensor.tensor_type]
    words = np.asarray(tensor.data).view(np.uint16).reshape(_rows_cols(tensor))
    if dtype == DType.float16:
        words = words.view(np.float16)
    return from_raw_array(pack_panels(words.T), name, dtype)


def _dequantized(tensor: gguf.ReaderTensor, name: str, dtype: DType) -> WeightData:
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    data = WeightData.from_numpy(
        np.ascontiguousarray(array.reshape(_rows_cols(tensor)), np.float32), name
    )
    return data if dtype == DType.float32 else data.astype(dtype)


def adapt_tensors(
    tensors: Mapping[str, gguf.ReaderTensor],
    hf_config: AutoConfig,
    dtype: DType,
    head_in_out: bool,
    repack: bool = False,
) -> dict[str, WeightData]:
    """Renames, keeps kernel-encoded matrices packed, dequantizes the rest.

    With `repack` (CPU) the `REPACKED` encodings are repacked for the panel
    kernels instead, and `HALF_FLOATS` matrices packed in half-width panels.

    `wte` is always dequantized: a lookup reads one row per token, so its
    encoding saves memory, not time, and MAX 26.7's gather + dequantize of
    a ggml table crashed (segfault) inside our graph. A quantized tied head
    therefore becomes its own packed `lm_head.weight`. With `head_in_out`
    (float weights on CPU, see `GPT2Config.lm_head_in_out`) a float head is
    stored `[n_embd, vocab]`, copied from `wte` if tied.
    """
    targets = plan({k: _rows_cols(t) for k, t in tensors.items()}, hf_config)
    out: dict[str, WeightData] = {}
    for source, target in targets.items():
        tensor = tensors[source]
        if _stays_packed(target) and repack and tensor.tensor_type in REPACKED:
            out.update(_repacked(tensor, target))
        elif _stays_packed(target) and repack and tensor.tensor_type in HALF_FLOATS:
            out[target] = _half(tensor, target)
        elif tensor.tensor_type in KERNEL_ENCODINGS and _stays_packed(target):
            out[target] = _packed(tensor, target)
        else:
            out[target] = _dequantized(tensor, target, dtype)
    wte = tensors[next(src for src, dst in targets.items() if dst == "wte.weight")]
    if "lm_head.weight" not in out and repack and wte.tensor_type in REPACKED:
        out.update(_repacked(wte, "lm_head.weight"))  # tied
    elif "lm_head.weight" not in out and repack and wte.tensor_type in HALF_FLOATS:
        out["lm_head.weight"] = _half(wte, "lm_head.weight")  # tied
    elif "lm_head.weight" not in out and wte.tensor_type in KERNEL_ENCODINGS:
        out["lm_head.weight"] = _packed(wte, "lm_head.weight")  # tied
    head = out.get("lm_head.weight")
    if (
        head_in_out
        and "lm_head.weight" not in panel_ggml_weights(out)
        and (head is None or head.quantization_encoding is None)
    ):
        out["lm_head.weight"] = transpose(head or out["wte.weight"], "lm_head.weight")
    return out


def pad_rows(data: WeightData) -> WeightData:
    """Appends all-zero rows up to a multiple of `ROW_TILE`.

    An all-zero ggml block decodes to zeros in Q4_0, Q4_K and Q6_K alike;
    the graph slices the padded outputs off (`QuantizedLinear`).
    """
    packed = np.from_dlpack(data.data)
    extra = -packed.shape[0] % ROW_TILE
    if extra == 0:
        return data
    padded = np.concatenate([packed, np.zeros((extra, packed.shape[1]), np.uint8)])
    return WeightData(
        padded, data.name, DType.uint8, Shape(padded.shape), data.quantization_encoding
    )


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
) -> dict[str, WeightData]:
    """The registered GGUF adapter."""
    _, dtype, head_in_out = pipeline_target(pipeline_config)
    # MAX's GGUFWeights (26.7.0) keeps its reader and raw tensors private;
    # the raw tensor carries the ggml type of encodings MAX cannot load.
    weights = list(state_dict.values())
    if not weights:
        raise CheckpointMismatch("GGUF file holds no tensors")
    check_metadata(metadata_of(weights[0]._reader), huggingface_config)  # type: ignore[attr-defined]
    tensors = {name: w._raw_tensor() for name, w in state_dict.items()}  # type: ignore[attr-defined]
    cpu = all(spec.device_type == "cpu" for spec in pipeline_config.model.device_specs)
    adapted = adapt_tensors(tensors, huggingface_config, dtype, head_in_out, cpu)
    return pack_panel_weights(adapted) if panel_target(pipeline_config) else adapted
