"""Hugging Face GPT-2 safetensors -> the graph's weights.

GPT-2 checkpoints differ from MAX's layout in three ways, each handled here:
- names: published files use `h.0.attn...`, `save_pretrained` writes
  `transformer.h.0.attn...`; the graph uses the former.
- layout: GPT-2's `Conv1D` stores weights `[in, out]`, the transpose of a
  `Linear`'s `[out, in]`.
- extras: `attn.bias` / `attn.masked_bias` are causal-mask buffers, not
  parameters, and a tied `lm_head` is the token embedding itself.

The mapping is planned from names and shapes alone (`plan_weights`) so the
same plan drives loading and the `gpt2-max verify` report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import DeviceRef, Shape
from max.graph.weights import WeightData, Weights
from max.pipelines.lib import PipelineConfig
from max.pipelines.lib.config.model_config import _select_quantization_encoding
from max.pipelines.modeling.config_enums import SupportedEncoding
from transformers import AutoConfig

from .kernels.panels import pack_panels
from .model_config import (
    CheckpointError,
    GPT2Config,
    activation_dtype,
    hyperparameters,
    is_gguf_quantized,
    lm_head_in_out,
    uses_panel_kernels,
    validate_hf_config,
)

# Conv1D modules: stored [in, out], the graph's Linear wants [out, in].
CONV1D_WEIGHTS = re.compile(
    r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
)
# Causal-mask buffers some checkpoints carry; the attention kernel masks itself.
MASK_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")

Action = Literal[
    "copied",
    "transposed",
    "dropped",
    "tied",
    # problems: the checkpoint does not match its config.json
    "missing",
    "unexpected",
    "misshaped",
    "duplicate",
]
PROBLEMS = frozenset({"missing", "unexpected", "misshaped", "duplicate"})
Dims = tuple[int, ...]


class CheckpointMismatch(CheckpointError):
    """The checkpoint's tensors do not match its config.json."""


@dataclass(frozen=True)
class MappedTensor:
    """Where one checkpoint tensor goes (or, for a tied head, comes from)."""

    source: str  # "" for a tensor the checkpoint lacks
    source_shape: Dims | None
    target: str | None
    target_shape: Dims | None
    action: Action
    note: str = ""

    @property
    def problem(self) -> bool:
        return self.action in PROBLEMS


def checkpoint_shapes(hf_config: AutoConfig) -> dict[str, Dims]:
    """Every parameter a GPT2LMHeadModel checkpoint stores, as GPT-2 stores
    it (Conv1D weights `[in, out]`; `lm_head.weight` only when untied)."""
    hp = hyperparameters(hf_config)
    e, inner, vocab = hp["n_embd"], hp["n_inner"], hp["vocab_size"]
    shapes: dict[str, Dims] = {
        "wte.weight": (vocab, e),
        "wpe.weight": (hp["n_positions"], e),
    }
    for i in range(hp["n_layer"]):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (e,),
            p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (e, 3 * e),
            p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e),
            p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,),
            p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (e, inner),
            p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (inner, e),
            p + "mlp.c_proj.bias": (e,),
        }
    shapes |= {"ln_f.weight": (e,), "ln_f.bias": (e,)}
    if not hp["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, e)
    return shapes


def _transposed_in_graph(name: str, lm_head_in_out: bool) -> bool:
    return bool(CONV1D_WEIGHTS.match(name)) or (
        lm_head_in_out and name == "lm_head.weight"
    )


def graph_weight_shapes(
    hf_config: AutoConfig, lm_head_in_out: bool = False
) -> dict[str, Dims]:
    """Every weight the graph binds (`Linear`s are `[out, in]`)."""
    shapes = {
        name: shape[::-1] if _transposed_in_graph(name, lm_head_in_out) else shape
        for name, shape in checkpoint_shapes(hf_config).items()
    }
    if lm_head_in_out and "lm_head.weight" not in shapes:
        shapes["lm_head.weight"] = shapes["wte.weight"][::-1]
    return shapes


def map_weights(
    stored: Mapping[str, Dims],
    hf_config: AutoConfig,
    lm_head_in_out: bool = False,
) -> list[MappedTensor]:
    """One row per checkpoint tensor (and per tensor it lacks): where it
    goes in the graph, or what is wrong with it."""
    validate_hf_config(hf_config)
    expected = checkpoint_shapes(hf_config)
    tied = "lm_head.weight" not in expected
    rows: list[MappedTensor] = []
    seen: dict[str, str] = {}

    for source, raw_shape in stored.items():
        shape = tuple(int(d) for d in raw_shape)
        name = source.removeprefix("transformer.")
        if MASK_BUFFERS.match(name):
            rows.append(
                MappedTensor(source, shape, None, None, "dropped", "causal-mask buffer")
            )
        elif name == "lm_head.weight" and tied:
            note = "tie_word_embeddings: the head is wte.weight"
            rows.append(MappedTensor(source, shape, None, None, "dropped", note))
        elif name not in expected:
            note = f"unexpected tensor {source} {list(shape)}"
            rows.append(MappedTensor(source, shape, None, None, "unexpected", note))
        elif name in seen:
            note = f"tensor {name} stored twice ({seen[name]} and {source})"
            rows.append(MappedTensor(source, shape, name, None, "duplicate", note))
        elif shape != expected[name]:
            seen[name] = source
            layout = " (Conv1D, stored [in, out])" if CONV1D_WEIGHTS.match(name) else ""
            note = (
                f"tensor {source} has shape {list(shape)}, expected "
                f"{list(expected[name])}{layout}"
            )
            rows.append(MappedTensor(source, shape, name, None, "misshaped", note))
        else:
            seen[name] = source
            if _transposed_in_graph(name, lm_head_in_out):
                rows.append(
                    MappedTensor(source, shape, name, shape[::-1], "transposed")
                )
            else:
                rows.append(MappedTensor(source, shape, name, shape, "copied"))

    for name, want in expected.items():
        if name not in seen:
            note = f"missing tensor {name} (expected {list(want)})"
            rows.append(MappedTensor("", None, name, None, "missing", note))
    wte = next((r for r in rows if r.target == "wte.weight" and not r.problem), None)
    if tied and wte is not None:
        if lm_head_in_out:
            head = (wte.source_shape[::-1], "a transposed copy of wte.weight")
        else:
            head = (wte.source_shape, "shares wte.weight")
        rows.append(
            MappedTensor(
                wte.source, wte.source_shape, "lm_head.weight", head[0], "tied", head[1]
            )
        )
    return rows


def plan_weights(
    stored: Mapping[str, Dims],
    hf_config: AutoConfig,
    lm_head_in_out: bool = False,
) -> list[MappedTensor]:
    """`map_weights`, raising one error that names every problem."""
    rows = map_weights(stored, hf_config, lm_head_in_out)
    refuse_mismatches("checkpoint", [r.note for r in rows if r.problem])
    return rows


def refuse_mismatches(what: str, problems: list[str]) -> None:
    """One error naming every problem (the first eight, then a count)."""
    if problems:
        shown = "; ".join(problems[:8])
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise CheckpointMismatch(
            f"{what} does not match its config.json: {shown}{more}"
        )


def convert_safetensor_state_dict(
    state_dict: Mapping[str, Weights],
    huggingface_config: AutoConfig,
    pipeline_config: PipelineConfig,
    **unused_kwargs: object,
) -> dict[str, WeightData]:
    """The registered safetensors adapter: renamed, transposed, cast."""
    encoding, dtype, head_in_out = pipeline_target(pipeline_config)
    if is_gguf_quantized(encoding):
        raise CheckpointError(
            f"--quantization-encoding {encoding} needs a GGUF file; this "
            "checkpoint is safetensors (write one with `gpt2-max convert`)"
        )
    adapted = adapt_weights(
        {name: weight.data() for name, weight in state_dict.items()},
        huggingface_config,
        dtype,
        head_in_out,
    )
    return pack_panel_weights(adapted) if panel_target(pipeline_config) else adapted


def pipeline_target(
    pipeline_config: PipelineConfig,
) -> tuple[SupportedEncoding, DType, bool]:
    """What the pipeline asks of an adapter: the encoding, the float dtype
    of unquantized weights, and whether the head is stored `[in, out]`."""
    encoding, devices = _encoding_and_devices(pipeline_config)
    return encoding, activation_dtype(encoding), lm_head_in_out(devices, encoding)


def panel_target(pipeline_config: PipelineConfig) -> bool:
    """Whether the graph runs the panel kernels (`uses_panel_kernels`), so
    an adapter packs the matrices with `pack_panel_weights`."""
    return uses_panel_kernels(*_encoding_and_devices(pipeline_config)[::-1])


def _encoding_and_devices(
    pipeline_config: PipelineConfig,
) -> tuple[SupportedEncoding, list[DeviceRef]]:
    model = pipeline_config.model
    encoding = _select_quantization_encoding(model, GPT2Config.DEFAULT_ENCODING)
    devices = [DeviceRef(spec.device_type, spec.id) for spec in model.device_specs]
    return encoding, devices


def pack_panel_weights(weights: Mapping[str, WeightData]) -> dict[str, WeightData]:
    """The float matrices in the panel kernels' layout (`pack_panels`).

    Block matrices arrive `[out, in]` (a `Linear`'s layout), the head
    `[in, out]` (`lm_head_in_out`); ggml-encoded ones, and ones a GGUF
    adapter already packed, stay as they are.
    """
    out = dict(weights)
    for name, data in weights.items():
        if (
            data.quantization_encoding is not None
            or not data.dtype.is_float()
            or len(data.shape) != 2
        ):
            continue  # ggml blocks, or already in panels
        if CONV1D_WEIGHTS.match(name):
            w_in_out = raw_array(data).T
        elif name == "lm_head.weight":
            w_in_out = raw_array(data)
        else:
            continue
        out[name] = from_raw_array(pack_panels(w_in_out), name, data.dtype)
    return out


def adapt_weights(
    tensors: Mapping[str, WeightData],
    hf_config: AutoConfig,
    dtype: DType,
    lm_head_in_out: bool = False,
) -> dict[str, WeightData]:
    """Applies `plan_weights` to loaded tensors.

    A tied head sharing `wte` is bound by the graph, not listed here.
    """
    shapes = {k: tuple(int(d) for d in v.shape) for k, v in tensors.items()}
    plan = plan_weights(shapes, hf_config, lm_head_in_out)
    out: dict[str, WeightData] = {}
    for item in plan:
        if item.target is None or (item.action == "tied" and not lm_head_in_out):
            continue
        data = tensors[item.source]
        if not data.dtype.is_float():
            raise CheckpointMismatch(
                f"tensor {item.source} has dtype {data.dtype}, expected a "
                "floating-point type"
            )
        if item.action in ("transposed", "tied"):
            data = transpose(data, item.target)
        else:
            data = WeightData(data.data, item.target, data.dtype, data.shape)
        out[item.target] = data if data.dtype == dtype else data.astype(dtype)
    return out


def transpose(data: WeightData, name: str) -> WeightData:
    """`[in, out]` -> `[out, in]`, in the same dtype."""
    moved = np.ascontiguousarray(raw_array(data).T)
    return from_raw_array(moved, name, data.dtype)


def raw_array(data: WeightData) -> np.ndarray:
    """The tensor as NumPy, bfloat16 (which NumPy lacks) as its raw 16-bit
    words, so it can be moved without being rounded or widened."""
    if data.dtype == DType.bfloat16:
        return data.to_buffer().view(DType.uint16).to_numpy()
    return np.from_dlpack(data.data)


def from_raw_array(array: np.ndarray, name: str, dtype: DType) -> WeightData:
    """The inverse of `raw_array`."""
    if dtype == DType.bfloat16:
        words = Buffer.from_numpy(np.ascontiguousarray(array, dtype=np.uint16))
        return WeightData(words.view(DType.bfloat16), name, dtype, Shape(array.shape))
    return WeightData.from_numpy(np.ascontiguousarray(array), name)
