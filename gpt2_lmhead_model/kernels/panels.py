"""Packing weights into the panels the panel kernels stream (`panels.mojo`)."""

from __future__ import annotations

import numpy as np

PANEL = 32
"""Columns per panel; must equal `PANEL` in `panels.mojo`. A multiple of
every x86 float32 vector width (8 lanes AVX2, 16 lanes AVX-512)."""

# The `ACT_*` codes of `panels.mojo`, by transformers' ACT2FN name. The
# other activations run as graph ops after an unfused kernel.
ACT_NONE = 0
FUSED_ACTIVATIONS: dict[str, int] = {
    "gelu": 1,
    "gelu_new": 2,
    "gelu_pytorch_tanh": 2,
    "gelu_fast": 2,
    "gelu_accurate": 2,
}


def panel_count(n: int) -> int:
    return -(-n // PANEL)


def pack_panels(w_in_out: np.ndarray) -> np.ndarray:
    """`[K, N]` (x @ W layout) -> `[ceil(N / PANEL), K, PANEL]`, zero-padded.

    Panel `p` holds columns `p*PANEL ... p*PANEL+PANEL-1`, row by row, so a
    kernel reads each panel as one contiguous stream.
    """
    if w_in_out.ndim != 2:
        raise ValueError(f"pack_panels needs a matrix, got shape {w_in_out.shape}")
    k, n = w_in_out.shape
    panels = panel_count(n)
    padded = np.zeros((k, panels * PANEL), dtype=w_in_out.dtype)
    padded[:, :n] = w_in_out
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))


Q8_BLOCK = 32
"""Values per scale in ggml's Q8_0 (`QK8_0`), and in `pack_q8_panels`."""


def pack_q8_panels(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml Q8_0 rows `[N, K/32 * 34]` bytes (per block: an fp16 scale, then
    32 int8) -> int8 panels `[ceil(N / PANEL), K, PANEL]` and float32 scales
    `[ceil(N / PANEL), K/32, PANEL]`, zero-padded past N, for
    `panel_q8_linear`. Column n of the panels is row n of the ggml matrix."""
    n, row_bytes = blocks.shape
    if row_bytes % (Q8_BLOCK + 2):
        raise ValueError(f"pack_q8_panels: {row_bytes} bytes is not whole Q8_0 blocks")
    nb = row_bytes // (Q8_BLOCK + 2)
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, nb, Q8_BLOCK + 2)
    scales = raw[:, :, :2].copy().view(np.float16).reshape(n, nb).astype(np.float32)
    quants = raw[:, :, 2:].copy().view(np.int8).reshape(n, nb * Q8_BLOCK)
    panels = panel_count(n)
    q = np.zeros((panels * PANEL, nb * Q8_BLOCK), dtype=np.int8)
    q[:n] = quants
    s = np.zeros((panels * PANEL, nb), dtype=np.float32)
    s[:n] = scales
    return (
        np.ascontiguousarray(q.reshape(panels, PANEL, -1).transpose(0, 2, 1)),
        np.ascontiguousarray(s.reshape(panels, PANEL, nb).transpose(0, 2, 1)),
    )
