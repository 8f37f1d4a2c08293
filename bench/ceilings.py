"""What this machine allows: memory bandwidth and float32 GEMM rate.

Decoding one stream reads every weight once per token, so it cannot beat
bandwidth / weight bytes. A large batch shares those reads, and is bounded
instead by compute: GEMM rate / FLOPs per token.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(
    threads: int, bandwidth_mib: int = 1024, gemm_n: int = 2048
) -> dict[str, float]:
    """Read bandwidth (a sum over an array far larger than cache) and the
    float32 matmul rate, both with `threads` threads, best of several runs."""
    import torch

    bandwidth = read_bandwidth_gbs(threads, bandwidth_mib)
    a = torch.randn(gemm_n, gemm_n)
    b = torch.randn(gemm_n, gemm_n)
    a @ b
    gemm_s = _best_of(5, lambda: a @ b)
    return {
        "threads": threads,
        "read_bandwidth_gbs": bandwidth,
        "gemm_gflops": 2 * gemm_n**3 / gemm_s / 1e9,
    }


def read_bandwidth_gbs(threads: int, mib: int = 1024) -> float:
    """GB/s of a `threads`-thread sum over `mib` MiB, best of five."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()
    return x.numel() * 4 / _best_of(5, lambda: x.sum()) / 1e9


PROBED = ("read_bandwidth_gbs", "gemm_gflops")


def ceiling_figures(machine: dict[str, Any]) -> dict[str, float]:
    return {key: machine[key] for key in PROBED}


def best_of_probes(probes: list[dict[str, float]]) -> dict[str, float]:
    """The best of each figure over several `measure` runs."""
    return {key: max(p[key] for p in probes) for key in PROBED}


def model_costs(hp: dict[str, Any], context: int) -> dict[str, float]:
    """Bytes read and FLOPs per generated token for a GPT-2 (float32).

    Matmul weights (blocks + LM head) are read each step; the embedding
    rows are gathered, not read whole. KV traffic is counted at `context`.
    """
    e, layers, vocab = hp["n_embd"], hp["n_layer"], hp["vocab_size"]
    inner = hp.get("n_inner") or 4 * e
    matmul_params = layers * (4 * e * e + 2 * e * inner) + vocab * e
    kv_bytes = 2 * layers * e * context * 4
    attention_flops = 4 * layers * e * context
    return {
        "weight_bytes_per_token": matmul_params * 4,
        "kv_bytes_per_token": kv_bytes,
        "flops_per_token": 2 * matmul_params + attention_flops,
    }


def gguf_matmul_bytes(path: Path) -> int:
    """Bytes of a GGUF file's matmul weights (blocks + head): what a decode
    step reads. The embeddings are gathered a row at a time, not read."""
    import gguf

    sizes = {
        t.name: int(t.n_bytes)
        for t in gguf.GGUFReader(path).tensors
        if len(t.shape) == 2
    }
    head = sizes.get("output.weight", sizes["token_embd.weight"])  # tied: wte
    gathered = ("token_embd.weight", "position_embd.weight", "output.weight")
    return head + sum(n for name, n in sizes.items() if name not in gathered)


def ceilings(machine: dict[str, float], costs: dict[str, float]) -> dict[str, float]:
    bandwidth = machine["read_bandwidth_gbs"] * 1e9
    return {
        "one_stream_tokens_per_second": bandwidth
        / (costs["weight_bytes_per_token"] + costs["kv_bytes_per_token"]),
        "large_batch_tokens_per_second": machine["gemm_gflops"]
        * 1e9
        / costs["flops_per_token"],
    }
