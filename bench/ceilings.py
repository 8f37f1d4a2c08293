"""What this machine allows: memory bandwidth and float32 GEMM rate.

Decoding one stream reads every weight once per token, so it cannot beat
bandwidth / weight bytes. A large batch shares those reads, and is bounded
instead by compute: GEMM rate / FLOPs per token.

The bandwidth of these virtual machines is not one number: it flips
between states (~34 and ~55 GB/s on the 2-core AMD EPYC) within a minute.
A ceiling probed at the start of a run does not bound a turn measured
ten minutes later, so every one-stream turn that is held against the
bandwidth is bracketed by probes taken in its own process just before and
just after it (`Bracket`), and held against the higher of the two. A share
above 1 then means the machine changed state during the turn: it is a
measurement error, reported as one and left out of every median.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_MIB = 1024
"""Bytes each probe streams: over 8x the largest last-level cache of
these machines (32 MiB), so no part of it is served from cache."""

GEMV_ROWS = 4096
"""Rows of each probe matrix: 4096 x 4096 float32 is 64 MiB, so each
matrix alone outgrows the cache, as a decode step's large matrices do."""


def _best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def last_level_cache_bytes() -> int | None:
    """The largest cache `sysfs` lists for CPU 0, or None where it lists none."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=None)


def machine_info() -> dict[str, Any]:
    """The CPU a run measured on: model, cores, SIMD flags, cache."""
    flags: list[str] = []
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "fma", "amx", "sse4", "f16c"))]
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "simd_flags": sorted(simd),
        "last_level_cache_bytes": last_level_cache_bytes(),
    }


class BandwidthProbe:
    """Read bandwidth measured two ways, with `threads` threads (the
    engine's), over `mib` MiB allocated once per process:

    - `sum`: one contiguous array summed, the plainest streaming read;
    - `gemv`: one vector times a row of matrices, each read once in turn,
      the access pattern of a decode step (torch's BLAS GEMV).

    The probe's figure is the higher of the two, each the best of
    `repeats`: a ceiling is what the machine was seen to allow."""

    def __init__(self, threads: int, mib: int = PROBE_MIB, repeats: int = 5) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads, self.repeats = threads, repeats
        self.array = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        count = max(1, mib * 2**20 // (GEMV_ROWS * GEMV_ROWS * 4))
        self.matrices = [torch.full((GEMV_ROWS, GEMV_ROWS), 1e-3) for _ in range(count)]
        self.vector = torch.ones(GEMV_ROWS)
        self.measure()  # first touch: page faults are not bandwidth

    def _gemv_all(self) -> None:
        for matrix in self.matrices:
            matrix @ self.vector

    def measure(self) -> dict[str, float]:
        sum_s = _best_of(self.repeats, self.array.sum)
        gemv_s = _best_of(self.repeats, self._gemv_all)
        gemv_bytes = sum(m.numel() * 4 for m in self.matrices)
        figures = {
            "sum_gbs": self.array.numel() * 4 / sum_s / 1e9,
            "gemv_gbs": gemv_bytes / gemv_s / 1e9,
        }
        return {**figures, "gbs": max(figures.values())}


@dataclass
class Bracket:
    """Probes just before and just after one measured turn."""

    before: dict[str, float]
    after: dict[str, float] = field(default_factory=dict)

    @property
    def gbs(self) -> float:
        """The higher probe: the most the turn could have streamed."""
        return max(self.before["gbs"], self.after.get("gbs", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "gbs": self.gbs}


def share(tokens_per_second: float, bytes_per_token: float, gbs: float) -> float:
    """The part of the probed bandwidth a turn streamed."""
    return tokens_per_second * bytes_per_token / (gbs * 1e9)


def shares_summary(shares: list[float]) -> dict[str, Any]:
    """Per-turn shares of the bracketing bandwidth: the median of those at
    most 1, and those above 1 apart, as measurement errors."""
    valid = [s for s in shares if s <= 1.0]
    return {
        "shares": shares,
        "measurement_errors": [s for s in shares if s > 1.0],
        "median": statistics.median(valid) if valid else None,
    }


def measure(threads: int, bandwidth_mib: int = PROBE_MIB, gemm_n: int = 2048) -> dict:
    """The machine's read bandwidth (`BandwidthProbe`) and float32 matmul
    rate, both with `threads` threads, best of several runs."""
    import torch

    probe = BandwidthProbe(threads, bandwidth_mib).measure()
    a = torch.randn(gemm_n, gemm_n)
    b = torch.randn(gemm_n, gemm_n)
    a @ b
    gemm_s = _best_of(5, lambda: a @ b)
    return {
        "threads": threads,
        "read_bandwidth_gbs": probe["gbs"],
        "read_bandwidth_probe": probe,
        "gemm_gflops": 2 * gemm_n**3 / gemm_s / 1e9,
    }


PROBED = ("read_bandwidth_gbs", "gemm_gflops")


def ceiling_figures(machine: dict[str, Any]) -> dict[str, float]:
    return {key: machine[key] for key in PROBED}


def best_of_probes(probes: list[dict[str, float]]) -> dict[str, float]:
    """The best of each figure over several probes."""
    return {key: max(p[key] for p in probes if key in p) for key in PROBED}


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
