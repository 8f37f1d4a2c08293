"""GPT-2 (Radford et al., 2019) as a MAX graph over a paged KV cache.

A step takes a ragged batch: the new tokens of every sequence laid end to
end, `input_row_offsets` marking where each sequence starts. A prefill
brings a whole prompt (or a chunk of it), a decode step one token; both run
the same graph. Names follow GPT-2's own (`wte`, `wpe`, `h`, `ln_1`, `attn`,
`c_attn`, `mlp`, `c_fc`, `ln_f`), so checkpoint tensors map one to one.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from max import tree
from max.dtype import DType
from max.graph import DeviceRef, Dim, Graph, TensorValue, Type, Value, Weight, ops
from max.graph import Module as GraphModule
from max.graph.quantization import QuantizationEncoding
from max.nn.attention.mask_config import MHAMaskVariant
from max.nn.embedding import Embedding
from max.nn.kernels import (
    flash_attention_ragged,
    fused_qkv_ragged_matmul,
    store_k_cache_ragged,
    store_v_cache_ragged,
)
from max.nn.kv_cache import KVCacheInputsPerDevice, PagedCacheValues
from max.nn.layer import LayerList, Module
from max.nn.linear import Linear
from max.nn.norm import LayerNorm
from max.nn.transformer import ReturnLogits
from max.nn.transformer.transformer import logits_postprocess
from max.pipelines.lib.interfaces.batch_processor import (
    ragged_kv_symbolic_input_tree,
)

from .kernels.panel_linear import panel_linear
from .kernels.panel_matmul import panel_matmul
from .kernels.panel_q4k_linear import panel_q4k_linear
from .kernels.panel_q6k_linear import panel_q6k_linear
from .kernels.panel_q8_linear import panel_q8_linear
from .kernels.panels import (
    ACT_NONE,
    FUSED_ACTIVATIONS,
    PANEL,
    Q4K_CODES_PER_WORD,
    Q4K_SUB,
    Q4K_SUPER,
    Q6K_GROUP,
    Q6K_SUPER,
    Q8_BLOCK,
    Q8_CODES_PER_WORD,
    panel_count,
)
from .model_config import GPT2Config

Activation = Callable[[TensorValue], TensorValue]

# The formulas behind transformers' ACT2FN names. gelu_new, gelu_fast,
# gelu_accurate and gelu_pytorch_tanh are all the tanh approximation.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": ops.gelu,
    "gelu_new": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_fast": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_accurate": functools.partial(ops.gelu, approximate="tanh"),
    "quick_gelu": functools.partial(ops.gelu, approximate="quick"),
    "relu": ops.relu,
    "silu": ops.silu,
    "swish": ops.silu,
    "tanh": ops.tanh,
}


def token_positions(
    input_row_offsets: TensorValue, cache_lengths: TensorValue, total: Dim
) -> TensorValue:
    """Each token's position in its own sequence, for a ragged batch.

    Position = tokens of that sequence already in the KV cache + the token's
    index within this step's slice of it. Read from the cache itself, so a
    decode step, a chunked prefill and a prefix-cache hit all agree with the
    keys attention will see.
    """
    device = input_row_offsets.device
    rows = ops.range(
        0,
        ops.cast(TensorValue(total), DType.int64),
        1,
        out_dim=total,
        dtype=DType.int64,
        device=device,
    )
    offsets = ops.cast(input_row_offsets, DType.int64)
    starts, ends = offsets[:-1], offsets[1:]
    # A token's sequence is the number of sequences that end at or before it.
    ended = ops.cast(ops.unsqueeze(rows, 1) >= ops.unsqueeze(ends, 0), DType.int64)
    seq = ops.sum(ended, axis=1).reshape([total])
    cached = ops.cast(ops.gather(cache_lengths, seq, axis=0), DType.int64)
    return rows - ops.gather(starts, seq, axis=0) + cached


class GPT2Attention(Module):
    """Causal multi-head self-attention with GPT-2's fused, biased QKV.

    `c_attn` writes K and V straight into the paged cache (MAX's fused QKV
    kernel) and returns Q; flash attention then reads every cached key of
    the sequence. No rotary embedding: position lives in `wpe`.
    """

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.kv_params = config.kv_params
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.scale = config.attention_scale(layer_idx)
        prefix = f"h.{layer_idx}.attn."
        self.c_attn = linear(
            config, prefix + "c_attn", config.n_embd, 3 * config.n_embd
        )
        self.c_proj = linear(config, prefix + "c_proj", config.n_embd, config.n_embd)

    def __call__(
        self,
        layer_idx: TensorValue,
        x: TensorValue,
        kv_collection: PagedCacheValues,
        input_row_offsets: TensorValue,
    ) -> TensorValue:
        q = self.qkv_into_cache(layer_idx, x, kv_collection, input_row_offsets)
        attn = flash_attention_ragged(
            self.kv_params,
            input=q.reshape((-1, self.n_head, self.kv_params.head_dim)),
            input_row_offsets=input_row_offsets,
            kv_collection=kv_collection,
            layer_idx=layer_idx,
            mask_variant=MHAMaskVariant.CAUSAL_MASK,
            scale=self.scale,
        )
        return self.c_proj(attn.reshape((-1, self.n_embd)))

    def qkv_into_cache(
        self,
        layer_idx: TensorValue,
        x: TensorValue,
        kv_collection: PagedCacheValues,
        input_row_offsets: TensorValue,
    ) -> TensorValue:
        """`c_attn`: writes K and V of the new tokens to the cache, returns Q."""
        if isinstance(self.c_attn, Linear):
            assert self.c_attn.bias is not None
            return fused_qkv_ragged_matmul(
                self.kv_params,
                input=x,
                input_row_offsets=input_row_offsets,
                wqkv=self.c_attn.weight.to(x.device),
                kv_collection=kv_collection,
                layer_idx=layer_idx,
                n_heads=self.n_head,
                bias=self.c_attn.bias.to(x.device),
            )
        # A ggml-quantized or panel-kernel c_attn has no fused cache-writing
        # kernel: project, then store K and V with MAX's paged-cache store ops.
        qkv = self.c_attn(x)
        heads = (-1, self.n_head, self.kv_params.head_dim)
        q, k, v = (qkv[:, i * self.n_embd : (i + 1) * self.n_embd] for i in range(3))
        store_k_cache_ragged(
            kv_collection, k.reshape(heads), input_row_offsets, layer_idx
        )
        store_v_cache_ragged(
            kv_collection, v.reshape(heads), input_row_offsets, layer_idx
        )
        return q


class GPT2MLP(Module):
    """The two-layer feed-forward: c_fc -> activation -> c_proj (not gated)."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        prefix = f"h.{layer_idx}.mlp."
        self.c_fc = linear(
            config,
            prefix + "c_fc",
            config.n_embd,
            config.n_inner,
            activation=config.activation_function,
        )
        self.c_proj = linear(config, prefix + "c_proj", config.n_inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]

    def __call__(self, x: TensorValue) -> TensorValue:
        if isinstance(self.c_fc, PanelLinear | PanelGGMLLinear):  # activation inside
            return self.c_proj(self.c_fc(x))
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(Module):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        norm = functools.partial(
            LayerNorm,
            config.n_embd,
            config.devices,
            config.dtype,
            eps=config.layer_norm_epsilon,
        )
        self.ln_1 = norm()
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = norm()
        self.mlp = GPT2MLP(config, layer_idx)

    def __call__(
        self,
        layer_idx: TensorValue,
        x: TensorValue,
        kv_collection: PagedCacheValues,
        input_row_offsets: TensorValue,
    ) -> TensorValue:
        x = x + self.attn(layer_idx, self.ln_1(x), kv_collection, input_row_offsets)
        return x + self.mlp(self.ln_2(x))


class QuantizedLinear(Module):
    """`x @ W.T + b` with `W` in a ggml encoding (blocks along `in`) and a
    float bias; MAX's `Linear` would quantize the bias with the weight."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        encoding: QuantizationEncoding,
        config: GPT2Config,
        has_bias: bool = True,
    ) -> None:
        super().__init__()
        device = config.devices[0]
        self.encoding = encoding
        self.out_dim = out_dim
        # Shape is a placeholder: loading sets the packed byte shape.
        self.weight = Weight(
            "weight",
            DType.uint8,
            (out_dim, in_dim),
            device=device,
            quantization_encoding=encoding,
        )
        self.bias = (
            Weight("bias", config.dtype, (out_dim,), device=device)
            if has_bias
            else None
        )

    def __call__(self, x: TensorValue) -> TensorValue:
        y = ops.qmatmul(self.encoding, None, x, self.weight.to(x.device))
        if int(self.weight.shape[0]) != self.out_dim:
            y = y[:, : self.out_dim]  # rows padded at load (`pad_rows`)
        return y if self.bias is None else y + self.bias.to(x.device)


class PanelLinear(Module):
    """`act(x @ W + b)` through the `panel_linear` Mojo kernel (CPU,
    float32), `W` packed in panels at load (`pack_panel_weights`).

    GPT-2's GELUs run fused in the kernel; any other activation as a graph
    op after it.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        config: GPT2Config,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        device = config.devices[0]
        self.activation = activation
        self.weight = Weight(
            "weight",
            DType.float32,
            (panel_count(out_dim), in_dim, PANEL),
            device=device,
        )
        self.bias = Weight("bias", DType.float32, (out_dim,), device=device)

    def __call__(self, x: TensorValue) -> TensorValue:
        fused = FUSED_ACTIVATIONS.get(self.activation or "", ACT_NONE)
        y = panel_linear(x, self.weight.to(x.device), self.bias.to(x.device), fused)
        if self.activation is not None and fused == ACT_NONE:
            y = ACTIVATIONS[self.activation](y)
        return y


class PanelGGMLLinear(Module):
    """`act(x @ W + b)` through a Mojo kernel (CPU) that streams a ggml
    matrix repacked at load (`gguf_weights.REPACKED`): the bytes of the
    encoding, not the four of a float. A subclass per encoding declares
    the repacked weights and calls its kernel.

    The head has no bias: it passes zeros.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        config: GPT2Config,
        activation: str | None = None,
        has_bias: bool = True,
    ) -> None:
        super().__init__()
        device = config.devices[0]
        self.activation = activation
        self.out_dim = out_dim
        self._declare_weights(in_dim, panel_count(out_dim), device)
        self.bias = (
            Weight("bias", DType.float32, (out_dim,), device=device)
            if has_bias
            else None
        )

    def _declare_weights(self, in_dim: int, panels: int, device: DeviceRef) -> None:
        raise NotImplementedError

    def _kernel(self, x: TensorValue, bias: TensorValue, fused: int) -> TensorValue:
        raise NotImplementedError

    def __call__(self, x: TensorValue) -> TensorValue:
        fused = FUSED_ACTIVATIONS.get(self.activation or "", ACT_NONE)
        bias = (
            self.bias.to(x.device)
            if self.bias is not None
            else ops.broadcast_to(
                ops.constant(0.0, DType.float32, x.device), [self.out_dim]
            )
        )
        y = self._kernel(x, bias, fused)
        if self.activation is not None and fused == ACT_NONE:
            y = ACTIVATIONS[self.activation](y)
        return y


class PanelQ8Linear(PanelGGMLLinear):
    """Q8_0 through `panel_q8_linear`: int8 codes, four per word, and a
    float32 scale per 32 (`pack_q8_panels`), against activations rounded to
    int8 per 32 values."""

    def _declare_weights(self, in_dim: int, panels: int, device: DeviceRef) -> None:
        words = in_dim // Q8_CODES_PER_WORD
        self.weight = Weight("weight", DType.uint32, (panels, words, PANEL), device)
        self.weight_scale = Weight(
            "weight_scale", DType.float32, (panels, in_dim // Q8_BLOCK, PANEL), device
        )

    def _kernel(self, x: TensorValue, bias: TensorValue, fused: int) -> TensorValue:
        return panel_q8_linear(
            x, self.weight.to(x.device), self.weight_scale.to(x.device), bias, fused
        )


class PanelQ4KLinear(PanelGGMLLinear):
    """Q4_K through `panel_q4k_linear`: 4-bit codes, 6-bit sub-block
    multipliers and float32 super-block scales (`pack_q4k_panels`), against
    activations rounded to int8 per 32 values."""

    def _declare_weights(self, in_dim: int, panels: int, device: DeviceRef) -> None:
        words = in_dim // Q4K_CODES_PER_WORD
        self.weight = Weight("weight", DType.uint32, (panels, words, PANEL), device)
        self.weight_sub_scales = Weight(
            "weight_sub_scales",
            DType.uint8,
            (panels, in_dim // Q4K_SUB, 2, PANEL),
            device,
        )
        self.weight_super_scales = Weight(
            "weight_super_scales",
            DType.float32,
            (panels, in_dim // Q4K_SUPER, 2, PANEL),
            device,
        )

    def _kernel(self, x: TensorValue, bias: TensorValue, fused: int) -> TensorValue:
        return panel_q4k_linear(
            x,
            self.weight.to(x.device),
            self.weight_sub_scales.to(x.device),
            self.weight_super_scales.to(x.device),
            bias,
            fused,
        )


class PanelQ6KLinear(PanelGGMLLinear):
    """Q6_K through `panel_q6k_linear`: low nibbles, high bit pairs, int8
    multipliers per 16 and float32 super-block scales (`pack_q6k_panels`),
    against activations rounded to int8 per 32 values."""

    def _declare_weights(self, in_dim: int, panels: int, device: DeviceRef) -> None:
        groups = in_dim // Q6K_GROUP
        words = in_dim // Q4K_CODES_PER_WORD  # low nibbles, packed as Q4_K's codes
        self.weight = Weight("weight", DType.uint32, (panels, words, PANEL), device)
        self.weight_high = Weight(
            "weight_high", DType.uint32, (panels, groups, PANEL), device
        )
        self.weight_multipliers = Weight(
            "weight_multipliers", DType.int8, (panels, groups, PANEL), device
        )
        self.weight_scales = Weight(
            "weight_scales",
            DType.float32,
            (panels, in_dim // Q6K_SUPER, PANEL),
            device,
        )

    def _kernel(self, x: TensorValue, bias: TensorValue, fused: int) -> TensorValue:
        return panel_q6k_linear(
            x,
            self.weight.to(x.device),
            self.weight_high.to(x.device),
            self.weight_multipliers.to(x.device),
            self.weight_scales.to(x.device),
            bias,
            fused,
        )


class PanelHalfLinear(PanelGGMLLinear):
    """F16 or BF16 through `panel_linear`: half-width panels (`_half` in
    `gguf_weights`), widened exactly to float32 in registers, so the math
    is float32's on the file's own weights at half the bytes."""

    weight_dtype: DType

    def _declare_weights(self, in_dim: int, panels: int, device: DeviceRef) -> None:
        shape = (panels, in_dim, PANEL)
        self.weight = Weight("weight", self.weight_dtype, shape, device)

    def _kernel(self, x: TensorValue, bias: TensorValue, fused: int) -> TensorValue:
        return panel_linear(x, self.weight.to(x.device), bias, fused)


class PanelF16Linear(PanelHalfLinear):
    weight_dtype = DType.float16


class PanelBF16Linear(PanelHalfLinear):
    weight_dtype = DType.bfloat16


PANEL_GGML_LAYERS: dict[str, type[PanelGGMLLinear]] = {
    "q8_0": PanelQ8Linear,
    "q4_k": PanelQ4KLinear,
    "q6_k": PanelQ6KLinear,
    "f16": PanelF16Linear,
    "bf16": PanelBF16Linear,
}
"""The ggml encodings `GPT2Config.panel_ggml_weights` may name."""


def linear(
    config: GPT2Config,
    name: str,
    in_dim: int,
    out_dim: int,
    activation: str | None = None,
) -> Linear | QuantizedLinear | PanelLinear | PanelGGMLLinear:
    """A biased projection: ggml-encoded if the checkpoint stores `name` so
    (Q8_0, Q4_K, Q6_K, F16 and BF16 repacked for a panel kernel on CPU), else the
    panel kernel on CPU float32, else MAX's `Linear`. `activation` is
    applied only by the panel layers; callers apply it to the others."""
    encoding = config.quantized_weights.get(name + ".weight")
    if encoding is not None:
        return QuantizedLinear(in_dim, out_dim, encoding, config)
    repacked = config.panel_ggml_weights.get(name + ".weight")
    if repacked is not None:
        return PANEL_GGML_LAYERS[repacked](in_dim, out_dim, config, activation)
    if config.panel_kernels:
        return PanelLinear(in_dim, out_dim, config, activation)
    return Linear(in_dim, out_dim, config.dtype, config.devices[0], has_bias=True)


class LMHead(Module):
    """The LM head stored `[n_embd, vocab]`, computing `x @ W` (see
    `GPT2Config.lm_head_in_out`)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.weight = Weight(
            "weight",
            config.dtype,
            (config.n_embd, config.vocab_size),
            device=config.devices[0],
        )

    def __call__(self, x: TensorValue) -> TensorValue:
        return x @ self.weight.to(x.device)


class PanelHead(Module):
    """The LM head through the `panel_matmul` Mojo kernel (CPU, float32),
    packed in panels at load; tied or not, it holds its own packed copy."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.vocab_size = config.vocab_size
        self.weight = Weight(
            "weight",
            DType.float32,
            (panel_count(config.vocab_size), config.n_embd, PANEL),
            device=config.devices[0],
        )

    def __call__(self, x: TensorValue) -> TensorValue:
        return panel_matmul(x, self.weight.to(x.device), self.vocab_size)


class GPT2(Module):
    """GPT2LMHeadModel: embeddings, `n_layer` blocks, final norm, LM head."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if len(config.devices) != 1:
            raise ValueError(f"GPT-2 runs on one device; got {len(config.devices)}")
        device = config.devices[0]
        self.config = config
        self.kv_params = config.kv_params
        self.wte = Embedding(config.vocab_size, config.n_embd, config.dtype, device)
        self.wpe = Embedding(config.n_positions, config.n_embd, config.dtype, device)
        self.h = LayerList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(
            config.n_embd, config.devices, config.dtype, eps=config.layer_norm_epsilon
        )
        self.lm_head: LMHead | PanelHead | PanelGGMLLinear | Linear | QuantizedLinear
        head_encoding = config.quantized_weights.get("lm_head.weight")
        head_repacked = config.panel_ggml_weights.get("lm_head.weight")
        if head_repacked is not None:
            self.lm_head = PANEL_GGML_LAYERS[head_repacked](
                config.n_embd, config.vocab_size, config, has_bias=False
            )
        elif config.panel_kernels and head_encoding is None:
            self.lm_head = PanelHead(config)
        elif config.lm_head_in_out:
            self.lm_head = LMHead(config)
        elif head_encoding is not None:
            self.lm_head = QuantizedLinear(
                config.n_embd, config.vocab_size, head_encoding, config, has_bias=False
            )
        else:
            self.lm_head = Linear(
                config.n_embd, config.vocab_size, config.dtype, device
            )
        if config.tie_word_embeddings and not config.lm_head_in_out:
            self.lm_head.set_shared_weight("weight", self.wte.weight)

    def __call__(
        self,
        tokens: TensorValue,
        kv_collection: PagedCacheValues,
        return_n_logits: TensorValue,
        input_row_offsets: TensorValue,
    ) -> tuple[TensorValue, ...]:
        positions = token_positions(
            input_row_offsets, kv_collection.cache_lengths, tokens.shape[0]
        )
        h = self.embed(tokens, positions)
        for idx, block in enumerate(self.h):
            layer_idx = ops.constant(idx, DType.uint32, device=DeviceRef.CPU())
            h = block(layer_idx, h, kv_collection, input_row_offsets)
        if self.config.return_logits == ReturnLogits.ALL:
            return self.all_logits(h, input_row_offsets)
        # Only the logits the sampler reads leave the graph (last token per
        # sequence unless the pipeline asks for more).
        return logits_postprocess(
            h,
            input_row_offsets,
            return_n_logits,
            norm=self.ln_f,
            lm_head=self.lm_head,
            return_logits=self.config.return_logits,
        )

    def all_logits(
        self, h: TensorValue, input_row_offsets: TensorValue
    ) -> tuple[TensorValue, ...]:
        """Every position's logits (`--enable-echo`: prompt log-probabilities),
        and the last token's taken from them: the head runs once per token,
        as `logits_postprocess` would run it twice for the last ones."""
        logits = ops.cast(self.lm_head(self.ln_f(h)), DType.float32)
        last = ops.gather(logits, input_row_offsets[1:] - 1, axis=0)
        return last, logits, input_row_offsets

    def embed(self, tokens: TensorValue, positions: TensorValue) -> TensorValue:
        """h0 = token embedding + learned position embedding."""
        return self.wte(tokens) + self.wpe(positions)

    def input_tree(self) -> OrderedDict[str, object]:
        """The graph's named inputs: ragged tokens, offsets, n logits, KV."""
        return ragged_kv_symbolic_input_tree(
            kv_params=self.kv_params,
            device_refs=list(self.config.devices),
            include_signal_buffers=False,
        )

    def trace(
        self,
        *input_types: Type[Any],
        name: str | None = None,
        module: GraphModule | None = None,
        custom_extensions: Iterable[Path] = (),
        is_device_graph: bool = False,
    ) -> Graph:
        """Traces the graph from `input_tree`'s flat leaves."""

        def forward(
            tokens: Value[Any],
            input_row_offsets: Value[Any],
            return_n_logits: Value[Any],
            *kv_inputs: Value[Any],
        ) -> tuple[TensorValue, ...]:
            kv_collection = tree.leaves(
                self.kv_params.unflatten_kv_inputs(iter(kv_inputs)),
                leaf=KVCacheInputsPerDevice,
            )[0]
            return self(
                tokens.tensor,
                kv_collection,
                return_n_logits.tensor,
                input_row_offsets.tensor,
            )

        return Graph(
            name or type(self).__qualname__,
            forward,
            input_types=input_types,
            custom_extensions=list(custom_extensions),
            module=module,
            is_device_graph=is_device_graph,
        )
