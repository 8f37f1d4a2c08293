"""The pipeline model: compiles the GPT-2 graph and runs ragged batches."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from max import tree
from max.driver import Buffer, Device
from max.engine import InferenceSession, Model
from max.graph.weights import Weights, WeightsAdapter
from max.nn.kv_cache import KVCacheInputs
from max.nn.transformer import ReturnLogits
from max.pipelines.context import LogProbabilities, TextContext
from max.pipelines.lib import (
    KVCacheConfig,
    ModelInputs,
    ModelOutputs,
    PipelineConfig,
    PipelineModelWithKVCache,
)
from max.pipelines.lib.graph_specs import GraphRole, GraphSpec
from max.pipelines.lib.interfaces.batch_processor import (
    SingleReplicaRaggedBatchProcessor,
)
from max.pipelines.lib.log_probabilities import LogProbabilitiesMixin
from max.pipelines.lib.memory_estimation import MemoryPlan
from typing_extensions import override

from . import runtime_threads
from .gpt2 import GPT2
from .kernels import KERNELS_DIR
from .model_config import CheckpointError, GPT2Config

# The process name `max serve` gives its model worker.
MAX_SERVE_WORKER = "Model Worker"


@dataclass
class GPT2Inputs(ModelInputs):
    """One step's graph inputs: the ragged token batch and its KV cache."""

    tokens: Buffer
    input_row_offsets: Buffer
    return_n_logits: Buffer

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        assert self.kv_cache_inputs is not None
        return (
            self.tokens,
            self.input_row_offsets,
            self.return_n_logits,
            *tree.leaves(self.kv_cache_inputs),
        )


class GPT2BatchProcessor(SingleReplicaRaggedBatchProcessor[TextContext, GPT2Inputs]):
    """MAX's ragged batching: every sequence's new tokens in one stream."""

    def _make_inputs(
        self,
        *,
        tokens: Buffer,
        input_row_offsets: Buffer,
        return_n_logits: Buffer,
        kv_cache_inputs: KVCacheInputs[Buffer, Buffer] | None,
        signal_buffers: list[Buffer],
    ) -> GPT2Inputs:
        del signal_buffers  # one device: no collectives
        return GPT2Inputs(
            tokens=tokens,
            input_row_offsets=input_row_offsets,
            return_n_logits=return_n_logits,
            kv_cache_inputs=kv_cache_inputs,
        )


class GPT2Model(
    LogProbabilitiesMixin,
    PipelineModelWithKVCache[TextContext, GPT2Config, Model],
):
    """GPT2LMHeadModel on MAX: one decoder graph over the paged KV cache.

    Log-probabilities come from MAX's `LogProbabilitiesMixin` (as llama3's):
    generated tokens from the last-token logits; prompt tokens (`echo`)
    from every position's logits, which the graph returns only when the
    pipeline asks for `ReturnLogits.ALL` (`--enable-echo`).

    A prompt prefilled in chunks (chunked prefill) gets its echo
    log-probabilities chunk by chunk: MAX drops those of a chunk that does
    not end the prompt, so they are kept here and put in front of the last
    chunk's.
    """

    model_config_cls: ClassVar[type[Any]] = GPT2Config
    batch_processor_cls: ClassVar[type[GPT2BatchProcessor]] = GPT2BatchProcessor

    def __init__(
        self,
        pipeline_config: PipelineConfig,
        session: InferenceSession,
        devices: list[Device],
        kv_cache_config: KVCacheConfig,
        weights: Weights,
        *,
        memory_plan: MemoryPlan,
        adapter: WeightsAdapter | None = None,
        return_logits: ReturnLogits = ReturnLogits.LAST_TOKEN,
        max_batch_size: int = 1,
    ) -> None:
        super().__init__(
            pipeline_config,
            session,
            devices,
            kv_cache_config,
            weights,
            adapter=adapter,
            return_logits=return_logits,
            max_batch_size=max_batch_size,
            memory_plan=memory_plan,
        )
        self._state_dict: dict[str, Any] = {}
        self._step_contexts: list[TextContext] = []
        self._echo_chunks: dict[Any, list[LogProbabilities]] = {}
        try:
            worker_nice = runtime_threads.worker_nice()  # before compiling
            self.model = self.load_graphs(session)[GraphRole.DECODER]
        except (CheckpointError, runtime_threads.SettingError) as e:
            if multiprocessing.current_process().name == MAX_SERVE_WORKER:
                # One line on stderr instead of the worker's traceback.
                raise SystemExit(f"gpt2_lmhead_model: {e}") from None
            raise
        if all(device.is_host for device in devices):
            runtime_threads.yield_to_python_threads(worker_nice)

    def execute(self, model_inputs: ModelInputs) -> ModelOutputs:
        assert isinstance(model_inputs, GPT2Inputs)
        assert self.batch_processor is not None
        outputs = self.model.execute(*model_inputs.buffers)
        return self.batch_processor.process_outputs(outputs)

    @override
    def prepare_initial_token_inputs(
        self,
        replica_batches: Sequence[Sequence[TextContext]],
        kv_cache_inputs: KVCacheInputs[Buffer, Buffer] | None = None,
        return_n_logits: int = 1,
    ) -> ModelInputs:
        # The step's sequences, in batch order, for `compute_log_probabilities`.
        self._step_contexts = [ctx for batch in replica_batches for ctx in batch]
        return super().prepare_initial_token_inputs(
            replica_batches,
            kv_cache_inputs=kv_cache_inputs,
            return_n_logits=return_n_logits,
        )

    @override
    def compute_log_probabilities(
        self,
        session: InferenceSession,
        model_inputs: ModelInputs,
        model_outputs: ModelOutputs,
        next_tokens: Buffer,
        batch_top_n: list[int],
        batch_echo: list[bool],
    ) -> list[LogProbabilities | None]:
        """MAX's, plus echo across prefill chunks (see the class docstring)."""
        contexts = self._step_contexts
        assert len(contexts) == len(batch_echo)
        chunked = [
            i
            for i, ctx in enumerate(contexts)
            if batch_echo[i] and batch_top_n[i] and ctx.tokens.actively_chunked
        ]
        if chunked:
            # A chunk's last position predicts the next chunk's first token,
            # not the token sampled (and discarded) after it.
            targets = np.array(next_tokens.to_numpy(), copy=True)
            for i in chunked:
                tokens = contexts[i].tokens
                targets[i] = tokens.all[tokens.processed_length + tokens.active_length]
            next_tokens = Buffer.from_numpy(targets)
        results = super().compute_log_probabilities(
            session, model_inputs, model_outputs, next_tokens, batch_top_n, batch_echo
        )
        for i, ctx in enumerate(contexts):
            result = results[i]
            if result is None or not batch_echo[i]:
                continue
            if i in chunked:
                self._echo_chunks.setdefault(ctx.request_id, []).append(result)
            elif earlier := self._echo_chunks.pop(ctx.request_id, None):
                results[i] = _concatenate([*earlier, result])
        return results

    @override
    def _load_state_dict(self) -> dict[str, Any]:
        self._state_dict = super()._load_state_dict()
        return self._state_dict

    @override
    def _create_model_config(self, state_dict: dict[str, Any]) -> GPT2Config:
        config = self.arch_config_as(GPT2Config)
        config.finalize(state_dict, self.return_logits)
        return config

    @override
    def graph_specs(self, model_config: GPT2Config) -> dict[str, GraphSpec]:
        plan = model_config.weights
        assert plan is not None
        gpt2 = GPT2(model_config)
        gpt2.load_state_dict(plan.pack(self._state_dict), weight_alignment=1)
        self._state_dict = {}  # the graph's registry now holds the weights
        return {
            GraphRole.DECODER: GraphSpec(
                gpt2,
                "gpt2",
                self._bind_graph_inputs(gpt2.input_tree()),
                weights=gpt2.state_dict(),
                custom_extensions=[KERNELS_DIR] if plan.needs_kernels else (),
            )
        }


def _concatenate(parts: list[LogProbabilities]) -> LogProbabilities:
    return LogProbabilities(
        token_log_probabilities=[v for p in parts for v in p.token_log_probabilities],
        top_log_probabilities=[t for p in parts for t in p.top_log_probabilities],
        sampled_token_ids=[t for p in parts for t in p.sampled_token_ids],
    )
