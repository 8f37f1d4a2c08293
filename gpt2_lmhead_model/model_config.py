"""GPT-2 hyperparameters, read from the checkpoint's `config.json`.

Every size and rule the graph uses comes from here, and a value the graph
cannot honour is refused at load time rather than silently approximated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from max.dtype import DType
from max.graph import DeviceRef
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

from .formats import StoredTensor
from .layers import ACTIVATIONS
from .routing import WeightPlan, route_weights

FUSED_QKV_SWITCH = "GPT2_MAX_FUSED_QKV"
"""`0` runs `c_attn` as a plain linear and stores K and V after it (as the
panel and ggml formats always do), instead of MAX's fused QKV-and-cache
kernel: that kernel's biased variant is used by no built-in MAX
architecture on GPU, so this is the fallback if it misbehaves there."""


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
    if act not in ACTIVATIONS:
        raise UnsupportedGPT2Config(
            f"config.json activation_function={act!r} is not supported; "
            f"supported: {', '.join(ACTIVATIONS)}"
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
        # GGUF files (llama.cpp's layout): float32 activations, each matrix
        # run as `routing` decides from how the file stores it. These name
        # the ggml type a file mostly holds; MAX 26.7 has no q8_0, so a Q8_0
        # file is served as float32 (`gpt2-max unpack` says so) and still
        # runs its matrices on the Q8_0 kernel.
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
    fused_qkv: bool = True
    """MAX's fused QKV-and-cache kernel for a `Dense` `c_attn` (see
    `FUSED_QKV_SWITCH`)."""
    weights: WeightPlan | None = None
    """Each matrix's format, from `finalize`."""
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
        encoding = requested_encoding(model_config)
        devices = [
            DeviceRef(spec.device_type, spec.id) for spec in model_config.device_specs
        ]
        dtype = activation_dtype(encoding)
        kv_format = model_config.kv_cache.kv_cache_format
        cache_dtype = cache_dtype_for_encoding(encoding, kv_format)
        check_kv_cache_dtype(cache_dtype, dtype, kv_format)
        kv_params = cls.construct_kv_params(
            huggingface_config=hf,
            pipeline_config=pipeline_config,
            devices=devices,
            kv_cache_config=model_config.kv_cache,
            cache_dtype=cache_dtype,
        )
        return cls(
            **hyperparameters(hf),
            max_seq_len=max_seq_len,
            dtype=dtype,
            devices=devices,
            kv_params=kv_params,
            fused_qkv=cls.fused_qkv_requested(),
        )

    @staticmethod
    def fused_qkv_requested() -> bool:
        """`FUSED_QKV_SWITCH`, on unless set to `0`."""
        return os.environ.get(FUSED_QKV_SWITCH, "1") != "0"

    def finalize(
        self, stored: Mapping[str, StoredTensor], return_logits: ReturnLogits
    ) -> None:
        """What only the weights can tell: each matrix's format, and whether
        the head is tied (no head of its own in the file)."""
        if len(self.devices) != 1:
            raise UnsupportedGPT2Config(
                f"GPT-2 runs on one device; got {len(self.devices)}"
            )
        self.weights = route_weights(stored, self.n_layer, self.devices[0], self.dtype)
        self.tie_word_embeddings = self.weights.tied
        self.return_logits = return_logits


def check_kv_cache_dtype(cache_dtype: DType, dtype: DType, kv_format: object) -> None:
    """The KV cache holds K and V as `c_attn` computes them: a cache of
    another dtype (`--kv-cache-format float8_e4m3fn`) is refused by name
    rather than failing inside the cache store or flash attention."""
    if cache_dtype != dtype:
        raise UnsupportedGPT2Config(
            f"--kv-cache-format {kv_format} gives a {cache_dtype} KV cache, but "
            f"this graph computes in {dtype} and stores K and V as they come "
            "out of c_attn; leave --kv-cache-format unset"
        )


def requested_encoding(model_config: MAXModelConfig) -> SupportedEncoding:
    """`--quantization-encoding`, or what MAX infers from the weights."""
    return _select_quantization_encoding(model_config, GPT2Config.DEFAULT_ENCODING)


def activation_dtype(encoding: SupportedEncoding) -> DType:
    """The float type the graph computes in: a ggml encoding's is float32."""
    if is_gguf_quantized(encoding):
        return DType.float32
    return supported_encoding_dtype(encoding)


def is_gguf_quantized(encoding: SupportedEncoding) -> bool:
    quantization = supported_encoding_quantization(encoding)
    return quantization is not None and quantization.is_gguf


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
