"""Hugging Face GPT-2 safetensors -> the graph's weights.

GPT-2 checkpoints differ from MAX's layout in three ways, each handled here:
- names: published files use `h.0.attn...`, `save_pretrained` writes
  `transformer.h.0.attn...`; the graph uses the former.
- layout: GPT-2's `Conv1D` stores weights `[in, out]`, the transpose of a
  `Linear`'s `[out, in]`.
- extras: `attn.bias` / `attn.masked_bias` are causal-mask buffers, not
  parameters, and a tied `lm_head` is the token embedding itself.

The mapping is planned from names and shapes alone (`plan_weights`) so the
same plan drives loading and the `gpt2-max verify` report. The adapter
hands on each tensor as stored (`StoredTensor`, matrices `[out, in]`);
how each matrix is then held is `routing`'s decision, not the adapter's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from max.graph.weights import WeightData, Weights
from max.pipelines.lib import PipelineConfig
from transformers import AutoConfig

from .formats import StoredTensor, raw_array
from .model_config import (
    CheckpointError,
    hyperparameters,
    is_gguf_quantized,
    requested_encoding,
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


def graph_weight_shapes(hf_config: AutoConfig) -> dict[str, Dims]:
    """Every tensor as the adapters hand it on (matrices `[out, in]`)."""
    return {
        name: shape[::-1] if CONV1D_WEIGHTS.match(name) else shape
        for name, shape in checkpoint_shapes(hf_config).items()
    }


def map_weights(
    stored: Mapping[str, Dims], hf_config: AutoConfig
) -> list[MappedTensor]:
    """One row per checkpoint tensor (and per tensor it lacks): where it
    goes in the graph, or what is wrong with it."""
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
            if CONV1D_WEIGHTS.match(name):
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
        note = "tie_word_embeddings: the head is wte.weight"
        shape = wte.source_shape
        rows.append(
            MappedTensor(wte.source, shape, "lm_head.weight", shape, "tied", note)
        )
    return rows


def plan_weights(
    stored: Mapping[str, Dims], hf_config: AutoConfig
) -> list[MappedTensor]:
    """`map_weights`, raising one error that names every problem."""
    rows = map_weights(stored, hf_config)
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
) -> dict[str, StoredTensor]:
    """The registered safetensors adapter: renamed, Conv1D weights seen as
    `[out, in]`, the causal-mask buffers and a tied head's copy dropped."""
    encoding = requested_encoding(pipeline_config.model)
    if is_gguf_quantized(encoding):
        raise CheckpointError(
            f"--quantization-encoding {encoding} needs a GGUF file; this "
            "checkpoint is safetensors (write one with `gpt2-max convert`)"
        )
    return adapt_weights(
        {name: weight.data() for name, weight in state_dict.items()},
        huggingface_config,
    )


def adapt_weights(
    tensors: Mapping[str, WeightData], hf_config: AutoConfig
) -> dict[str, StoredTensor]:
    """Applies `plan_weights` to loaded tensors, without copying them."""
    shapes = {k: tuple(int(d) for d in v.shape) for k, v in tensors.items()}
    out: dict[str, StoredTensor] = {}
    for item in plan_weights(shapes, hf_config):
        if item.target is None or item.action == "tied":
            continue
        data = tensors[item.source]
        if not data.dtype.is_float():
            raise CheckpointMismatch(
                f"tensor {item.source} has dtype {data.dtype}, expected a "
                "floating-point type"
            )
        array = raw_array(data)
        if item.action == "transposed":
            array = array.T
        out[item.target] = StoredTensor(
            item.target, array, data.dtype, tuple(array.shape)
        )
    return out
