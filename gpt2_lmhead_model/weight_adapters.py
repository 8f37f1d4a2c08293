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
from max.graph import Shape
from max.graph.weights import WeightData, Weights
from max.pipelines.lib import PipelineConfig
from max.pipelines.lib.config.model_config import _select_quantization_encoding
from max.pipelines.modeling.config_enums import supported_encoding_dtype
from transformers import AutoConfig

from .model_config import (
    CheckpointError,
    GPT2Config,
    hyperparameters,
    validate_hf_config,
)

# Conv1D modules: stored [in, out], the graph's Linear wants [out, in].
CONV1D_WEIGHTS = re.compile(
    r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
)
# Causal-mask buffers some checkpoints carry; the attention kernel masks itself.
MASK_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")

Action = Literal["copied", "transposed", "dropped", "tied"]
Dims = tuple[int, ...]


class CheckpointMismatch(CheckpointError):
    """The checkpoint's tensors do not match its config.json."""


@dataclass(frozen=True)
class MappedTensor:
    """Where one checkpoint tensor goes (or, for a tied head, comes from)."""

    source: str
    source_shape: Dims
    target: str | None
    target_shape: Dims | None
    action: Action
    note: str = ""


def graph_weight_shapes(hf_config: AutoConfig) -> dict[str, Dims]:
    """Every weight the graph binds, in MAX's `[out, in]` layout."""
    hp = hyperparameters(hf_config)
    e, inner = hp["n_embd"], hp["n_inner"]
    shapes: dict[str, Dims] = {
        "wte.weight": (hp["vocab_size"], e),
        "wpe.weight": (hp["n_positions"], e),
    }
    for i in range(hp["n_layer"]):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (e,),
            p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (3 * e, e),
            p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e),
            p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,),
            p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (inner, e),
            p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (e, inner),
            p + "mlp.c_proj.bias": (e,),
        }
    shapes |= {"ln_f.weight": (e,), "ln_f.bias": (e,)}
    if not hp["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (hp["vocab_size"], e)
    return shapes


def plan_weights(
    checkpoint_shapes: Mapping[str, Dims], hf_config: AutoConfig
) -> list[MappedTensor]:
    """Maps checkpoint tensors to graph weights, or raises naming every problem."""
    validate_hf_config(hf_config)
    expected = graph_weight_shapes(hf_config)
    tied = "lm_head.weight" not in expected
    plan: list[MappedTensor] = []
    problems: list[str] = []
    seen: dict[str, str] = {}

    for source, raw_shape in checkpoint_shapes.items():
        shape = tuple(int(d) for d in raw_shape)
        name = source.removeprefix("transformer.")
        if MASK_BUFFERS.match(name):
            plan.append(
                MappedTensor(source, shape, None, None, "dropped", "causal-mask buffer")
            )
            continue
        if name == "lm_head.weight" and tied:
            plan.append(
                MappedTensor(
                    source,
                    shape,
                    None,
                    None,
                    "dropped",
                    "tie_word_embeddings: the head is wte.weight",
                )
            )
            continue
        if name not in expected:
            problems.append(f"unexpected tensor {source} {list(shape)}")
            continue
        if name in seen:
            problems.append(f"tensor {name} stored twice ({seen[name]} and {source})")
            continue
        seen[name] = source
        want = expected[name]
        transposed = bool(CONV1D_WEIGHTS.match(name))
        stored_want = want[::-1] if transposed else want
        if shape != stored_want:
            layout = " (Conv1D, stored [in, out])" if transposed else ""
            problems.append(
                f"tensor {source} has shape {list(shape)}, expected "
                f"{list(stored_want)}{layout}"
            )
            continue
        plan.append(
            MappedTensor(
                source, shape, name, want, "transposed" if transposed else "copied"
            )
        )

    for name, want in expected.items():
        if name not in seen:
            problems.append(f"missing tensor {name} (expected {list(want)})")
    if problems:
        shown = "; ".join(problems[:8])
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise CheckpointMismatch(
            f"checkpoint does not match its config.json: {shown}{more}"
        )
    if tied:
        wte = next(m for m in plan if m.target == "wte.weight")
        plan.append(
            MappedTensor(
                wte.source,
                wte.source_shape,
                "lm_head.weight",
                wte.target_shape,
                "tied",
                "shares wte.weight",
            )
        )
    return plan


def convert_safetensor_state_dict(
    state_dict: Mapping[str, Weights],
    huggingface_config: AutoConfig,
    pipeline_config: PipelineConfig,
    **unused_kwargs: object,
) -> dict[str, WeightData]:
    """The registered safetensors adapter: renamed, transposed, cast."""
    encoding = _select_quantization_encoding(
        pipeline_config.model, GPT2Config.DEFAULT_ENCODING
    )
    return adapt_weights(
        {name: weight.data() for name, weight in state_dict.items()},
        huggingface_config,
        supported_encoding_dtype(encoding),
    )


def adapt_weights(
    tensors: Mapping[str, WeightData], hf_config: AutoConfig, dtype: DType
) -> dict[str, WeightData]:
    """Applies `plan_weights` to loaded tensors; the tied head is left to the graph."""
    plan = plan_weights(
        {k: tuple(int(d) for d in v.shape) for k, v in tensors.items()}, hf_config
    )
    out: dict[str, WeightData] = {}
    for item in plan:
        if item.action not in ("copied", "transposed") or item.target is None:
            continue
        data = tensors[item.source]
        if not data.dtype.is_float():
            raise CheckpointMismatch(
                f"tensor {item.source} has dtype {data.dtype}, expected a "
                "floating-point type"
            )
        if item.action == "transposed":
            data = _transpose(data, item.target)
        else:
            data = WeightData(data.data, item.target, data.dtype, data.shape)
        out[item.target] = data if data.dtype == dtype else data.astype(dtype)
    return out


def _transpose(data: WeightData, name: str) -> WeightData:
    """`[in, out]` -> `[out, in]`; bfloat16 moves as its raw 16-bit words."""
    if data.dtype == DType.bfloat16:
        raw = data.to_buffer().view(DType.uint16).to_numpy()
        moved = Buffer.from_numpy(np.ascontiguousarray(raw.T))
        return WeightData(
            moved.view(DType.bfloat16), name, DType.bfloat16, Shape(moved.shape)
        )
    array = np.ascontiguousarray(np.from_dlpack(data.data).T)
    return WeightData.from_numpy(array, name)
