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
