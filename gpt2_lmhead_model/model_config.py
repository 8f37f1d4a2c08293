"""GPT-2 hyperparameters, read from the checkpoint's `config.json`.

Every size and rule the graph uses comes from here, and a value the graph
cannot honour is refused at load time rather than silently approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from max.dtype import DType
from max.graph import DeviceRef
from max.graph.quantization import QuantizationEncoding
from max.nn.kv_cache import KVCacheParams
from max.nn.transformer import ReturnLogits
from max.pipelines.kv_cache import cache_dtype_for_encoding
from max.pipelines.lib import KVCacheConfig, MAXModelConfig, PipelineConfig
from max.pipelines.lib.config.model_config import _select_quantization_encoding
from max.pipelines.lib.interfaces.arch_config import (
    ArchConfigWithKVCache,
    ArchConfigWithStoredKVParams,
)
from max.pipelines.modeling.config_enums import (
    SupportedEncoding,
    supported_encoding_dtype,
    supported_encoding_quantization,
)
from transformers import AutoConfig
from typing_extensions import override

# transformers' ACT2FN names that the graph implements exactly.
SUPPORTED_ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "gelu_accurate",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
)


class CheckpointError(ValueError):
    """This checkpoint cannot be served; the message says why, in one line."""


class UnsupportedGPT2Config(CheckpointError):
    """A `config.json` value this architecture cannot run faithfully."""


def validate_hf_config(hf_config: AutoConfig) -> None:
    """Refuses a GPT-2 config whose math the graph would not reproduce."""
    archs = getattr(hf_config, "architectures", None) or []
    if "GPT2LMHeadModel" not in archs:
        raise UnsupportedGPT2Config(
            f"config.json architectures is {archs!r}; this architecture "
            "serves GPT2LMHeadModel checkpoints only"
        )
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "gpt2":
        raise UnsupportedGPT2Config(
            f"config.json model_type is {model_type!r}, expected 'gpt2'"
        )
    act = hf_config.activation_function
    if act not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedGPT2Config(
            f"config.json activation_function={act!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
    if hf_config.n_embd % hf_config.n_head:
        raise UnsupportedGPT2Config(
            f"config.json n_embd={hf_config.n_embd} is not divisible by "
            f"n_head={hf_config.n_head}"
        )
    if getattr(hf_config, "add_cross_attention", False):
        raise UnsupportedGPT2Config(
            "config.json add_cross_attention=true (encoder-decoder GPT-2) "
            "is not supported"
        )
    for name in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size"):
        value = getattr(hf_config, name)
        if not isinstance(value, int) or value <= 0:
            raise UnsupportedGPT2Config(
                f"config.json {name}={value!r} must be a positive integer"
            )
    n_inner = getattr(hf_config, "n_inner", None)
    if n_inner is not None and (not isinstance(n_inner, int) or n_inner <= 0):
        raise UnsupportedGPT2Config(
            f"config.json n_inner={n_inner!r} must be null or a positive integer"
        )


@dataclass(kw_only=True)
class GPT2Config(ArchConfigWithStoredKVParams, ArchConfigWithKVCache):
    """What the GPT-2 graph needs to know, in GPT-2's own names."""

    DEFAULT_ENCODING: ClassVar[SupportedEncoding] = "float32"
    SUPPORTED_ENCODINGS: ClassVar[set[SupportedEncoding]] = {
        "float32",
        "bfloat16",
        # GGUF files (llama.cpp's layout), on CPU: MAX's ggml kernels, and
        # this package's for Q4_K, Q6_K and Q8_0 matrices (`gguf_weights.REPACKED`).
        "q4_k",
        "q4_0",
        "q6_k",
    }

    vocab_size: int
    n_positions: int
    n_embd: int
    n_head: int
    n_layer: int
    n_inner: int
    activation_function: str
    layer_norm_epsilon: float
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    tie_word_embeddings: bool

    max_seq_len: int
    dtype: DType
    """Activations, the KV cache and every unquantized weight."""
    devices: list[DeviceRef]
    kv_params: KVCacheParams
    quantized_weights: dict[str, QuantizationEncoding] = field(default_factory=dict)
    """Graph weight name -> the ggml encoding it is stored in (GGUF only).
    Per tensor, because llama.cpp's mixed files (Q4_K_M) mix encodings."""
    panel_ggml_weights: dict[str, str] = field(default_factory=dict)
    """Graph weight name -> the ggml encoding (`q8_0`, `q4_k`, `q6_k`, `f16`
    or `bf16`) of a matrix repacked at load for this package's panel kernels
    (CPU, see `gguf_weights.REPACKED` and `HALF_FLOATS`): the codes in
    `<name>`, their scales beside it (`<name>_scale` for Q8_0;
    `<name>_sub_scales`, `<name>_super_scales` for Q4_K; `<name>_high`,
    `<name>_multipliers`, `<name>_scales` for Q6_K; none for the half
    floats). llama.cpp falls back to Q8_0 for a matrix whose rows are
    not whole K-quant blocks (GPT-2 XL's 1600-wide rows in a Q4_K file)."""
    lm_head_in_out: bool = False
    """Store the LM head `[n_embd, vocab]` and compute `x @ W`: on MAX's CPU
    kernels that GEMV reads the 50257-wide head ~25% faster than the
    `[vocab, n_embd]` layout a `Linear` uses (docs/BENCHMARKS.md)."""
    panel_kernels: bool = False
    """Run the float32 matmuls on CPU through this package's Mojo kernels
    (`kernels/`), with weights packed in panels at load; see
    `uses_panel_kernels`."""
    return_logits: ReturnLogits = ReturnLogits.LAST_TOKEN

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def attention_scale(self, layer_idx: int) -> float:
        """GPT-2's softmax scale for one layer (see `GPT2Attention.scaling`).

        `reorder_and_upcast_attn` needs nothing here: it only moves the same
        scale before the QK^T product and computes it in float32, which the
        flash-attention kernel does for every dtype.
        """
        scale = 1.0 / math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        return scale

    @classmethod
    def construct_kv_params(
        cls,
        huggingface_config: AutoConfig,
        pipeline_config: PipelineConfig,
        devices: list[DeviceRef],
        kv_cache_config: KVCacheConfig,
        cache_dtype: DType,
        *,
        allow_kv_head_replication: bool = False,
    ) -> KVCacheParams:
        """Multi-head attention: one KV head per query head."""
        validate_hf_config(huggingface_config)
        return kv_cache_config.to_params(
            dtype=cache_dtype,
            allow_kv_head_replication=allow_kv_head_replication,
            n_kv_heads=huggingface_config.n_head,
            head_dim=huggingface_config.n_embd // huggingface_config.n_head,
            num_layers=huggingface_config.n_layer,
            devices=devices,
            data_parallel_degree=pipeline_config.model.data_parallel_degree,
        )

    @staticmethod
    def get_num_layers(huggingface_config: AutoConfig) -> int:
        return int(huggingface_config.n_layer)

    @override
    @classmethod
    def calculate_max_seq_len(
        cls, huggingface_config: AutoConfig, model_config: MAXModelConfig
    ) -> int:
        """The context window is `n_positions`: `wpe` has no row past it."""
        n_positions = int(huggingface_config.n_positions)
        requested = model_config.max_length
        if requested is None:
            return n_positions
        if requested > n_positions:
            raise UnsupportedGPT2Config(
                f"--max-length {requested} exceeds this checkpoint's context "
                f"window n_positions={n_positions}: GPT-2 has no position "
                "embedding past it"
            )
        return int(requested)

    @override
    @classmethod
    def initialize(
        cls,
        pipeline_config: PipelineConfig,
        model_config: MAXModelConfig | None = None,
        *,
        max_seq_len: int,
    ) -> Self:
        model_config = model_config or pipeline_config.model
        hf = model_config.huggingface_config
        if hf is None:
            raise UnsupportedGPT2Config(
                f"no config.json could be read for {model_config.model_path!r}"
            )
        validate_hf_config(hf)
        encoding = _select_quantization_encoding(model_config, cls.DEFAULT_ENCODING)
        devices = [
            DeviceRef(spec.device_type, spec.id) for spec in model_config.device_specs
        ]
        kv_params = cls.construct_kv_params(
            huggingface_config=hf,
            pipeline_config=pipeline_config,
            devices=devices,
            kv_cache_config=model_config.kv_cache,
            cache_dtype=cache_dtype_for_encoding(
                encoding, model_config.kv_cache.kv_cache_format
            ),
        )
        return cls(
            **hyperparameters(hf),
            max_seq_len=max_seq_len,
            dtype=activation_dtype(encoding),
            devices=devices,
            kv_params=kv_params,
            lm_head_in_out=lm_head_in_out(devices, encoding),
            panel_kernels=uses_panel_kernels(devices, encoding),
        )


def activation_dtype(encoding: SupportedEncoding) -> DType:
    """The float type the graph computes in: a ggml encoding's is float32."""
    if is_gguf_quantized(encoding):
        return DType.float32
    return supported_encoding_dtype(encoding)


def is_gguf_quantized(encoding: SupportedEncoding) -> bool:
    quantization = supported_encoding_quantization(encoding)
    return quantization is not None and quantization.is_gguf


def lm_head_in_out(devices: list[DeviceRef], encoding: SupportedEncoding) -> bool:
    """Whether the LM head is stored `[n_embd, vocab]`: float weights on CPUs.

    GPUs keep MAX's standard `[vocab, n_embd]` layout (and a tied head then
    shares the token embedding instead of holding a transposed copy); so do
    ggml-quantized heads, whose blocks run along `n_embd`.
    """
    return all(device.is_cpu() for device in devices) and not is_gguf_quantized(
        encoding
    )


def uses_panel_kernels(devices: list[DeviceRef], encoding: SupportedEncoding) -> bool:
    """Whether float matmuls run on the `kernels/` panel kernels: float32
    weights on CPUs. They stream the weights near memory bandwidth where
    MAX 26.7's generic CPU matmul reaches about half of it on decode shapes;
    GPUs and bfloat16 stay on MAX's kernels. ggml-encoded matrices are
    routed per tensor instead (`panel_ggml_weights`, `quantized_weights`)."""
    return all(device.is_cpu() for device in devices) and encoding == "float32"


def hyperparameters(hf_config: AutoConfig) -> dict[str, Any]:
    """GPT-2's hyperparameters with transformers' defaults filled in."""
    n_inner = getattr(hf_config, "n_inner", None)
    return {
        "vocab_size": int(hf_config.vocab_size),
        "n_positions": int(hf_config.n_positions),
        "n_embd": int(hf_config.n_embd),
        "n_head": int(hf_config.n_head),
        "n_layer": int(hf_config.n_layer),
        "n_inner": int(n_inner) if n_inner is not None else 4 * hf_config.n_embd,
        "activation_function": hf_config.activation_function,
        "layer_norm_epsilon": float(hf_config.layer_norm_epsilon),
        "scale_attn_weights": bool(getattr(hf_config, "scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": bool(
            getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)
        ),
        "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", True)),
    }
