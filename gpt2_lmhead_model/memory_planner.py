"""Serving defaults that batch on CPU.

MAX's generic default is `max_batch_size=1` on a CPU ("batching on CPU is
generally not useful"), which serves one request at a time. For GPT-2-sized
models that leaves most of the CPU idle: a decode step's cost is dominated
by reading the weights, which a batch shares. So when the user sets no
`--max-batch-size`, a CPU gets `CPU_BATCH_SIZE` concurrent sequences, fewer
if their full-length KV cache would not fit in a quarter of free memory.
"""

from __future__ import annotations

from typing import Any

from max.driver import Device
from max.pipelines.kv_cache.memory_planner import PagedMemoryPlanner

CPU_BATCH_SIZE = 32
KV_SHARE_OF_FREE_MEMORY = 0.25


class GPT2MemoryPlanner(PagedMemoryPlanner):
    """`PagedMemoryPlanner`, with a batching default for CPUs."""

    def infer_max_batch_size(
        self, pipeline_config: Any, devices: list[Device], weights_size: int
    ) -> int | None:
        if not all(device.is_host for device in devices):
            return None  # accelerators: MAX's own default
        kv_params = self._config.get_kv_params()
        pages = -(-self._config.get_max_seq_len() // kv_params.page_size)
        sequence_bytes = pages * kv_params.bytes_per_block
        free = min(int(device.stats["free_memory"]) for device in devices)
        budget = (free - weights_size) * KV_SHARE_OF_FREE_MEMORY
        return max(1, min(CPU_BATCH_SIZE, int(budget // sequence_bytes)))
