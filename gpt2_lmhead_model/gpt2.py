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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from max import tree
from max.dtype import DType
from max.graph import DeviceRef, Dim, Graph, TensorValue, Type, Value, ops
from max.graph import Module as GraphModule
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
from max.nn.norm import LayerNorm
from max.nn.transformer import ReturnLogits
from max.nn.transformer.transformer import logits_postprocess
from max.pipelines.lib.interfaces.batch_processor import (
    ragged_kv_symbolic_input_tree,
)

from .formats import Dense
from .layers import GPT2Linear
from .model_config import GPT2Config


def linear(
    config: GPT2Config,
    name: str,
    in_dim: int,
    out_dim: int,
    activation: str | None = None,
    has_bias: bool = True,
) -> GPT2Linear:
    """The layer `name` in the format the routing plan gave its matrix."""
    assert config.weights is not None, "GPT2Config.finalize comes first"
    return GPT2Linear(
        config.weights[name],
        in_dim,
        out_dim,
        config.dtype,
        config.devices[0],
        activation=activation,
        has_bias=has_bias,
    )


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
        fmt = self.c_attn.fmt
        self.fused_qkv = config.fused_qkv and isinstance(fmt, Dense) and not fmt.in_out

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
        if self.fused_qkv:
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
        # Any other format has no fused cache-writing kernel: project, then
        # store K and V with MAX's paged-cache store ops.
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

    def __call__(self, x: TensorValue) -> TensorValue:
        return self.c_proj(self.c_fc(x))


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


class GPT2(Module):
    """GPT2LMHeadModel: embeddings, `n_layer` blocks, final norm, LM head."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        device = config.devices[0]
        self.config = config
        self.kv_params = config.kv_params
        self.wte = Embedding(config.vocab_size, config.n_embd, config.dtype, device)
        self.wpe = Embedding(config.n_positions, config.n_embd, config.dtype, device)
        self.h = LayerList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(
            config.n_embd, config.devices, config.dtype, eps=config.layer_norm_epsilon
        )
        self.lm_head = linear(
            config, "lm_head", config.n_embd, config.vocab_size, has_bias=False
        )
        assert config.weights is not None
        if config.weights.head_shares_wte:
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
