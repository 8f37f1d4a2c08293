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


Q4K_SUPER = 256
"""Values per super-block in ggml's Q4_K (`QK_K`): an fp16 `d` and `dmin`."""
Q4K_SUB = 32
"""Values per sub-block in Q4_K: 6-bit `sc` and `m`."""
Q4K_CODES_PER_WORD = 8
"""4-bit codes per uint32 of `pack_q4k_panels`' codes."""
Q4K_ACTIVATION_LEVELS = 127
"""`panel_q4k_linear` rounds each 32 values of x to int8 on `amax / 127`."""
_Q4K_BYTES = 144  # d, dmin (fp16), 12 bytes of packed sc/m, 128 of codes


def _columns_to_panels(per_row: np.ndarray) -> np.ndarray:
    """`[N, ...]` per-column data -> `[ceil(N / PANEL), ..., PANEL]`,
    zero-padded past N."""
    n = per_row.shape[0]
    padded = np.zeros((panel_count(n) * PANEL, *per_row.shape[1:]), per_row.dtype)
    padded[:n] = per_row
    panels = padded.reshape(-1, PANEL, *per_row.shape[1:])
    return np.ascontiguousarray(np.moveaxis(panels, 1, -1))


def pack_q4k_panels(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml Q4_K rows `[N, K/256 * 144]` bytes -> for `panel_q4k_linear`:
    - codes `[P, K/8, PANEL]` uint32, 8 K-consecutive 4-bit codes per word:
      byte b holds offset b in its low nibble and 4 + b in its high one;
    - sub-block multipliers `[P, K/32, 2, PANEL]` uint8: `sc`, then `m`;
    - super-block scales `[P, K/256, 2, PANEL]` float32: `d`, then `dmin`;
    P = ceil(N / PANEL), zero-padded past N (an all-zero column decodes to
    zeros). Column n of the panels is row n of the ggml matrix; its weight
    at k is `d*sc * code - dmin*m`."""
    n, row_bytes = blocks.shape
    if row_bytes % _Q4K_BYTES:
        raise ValueError(f"pack_q4k_panels: {row_bytes} bytes is not whole Q4_K blocks")
    supers = row_bytes // _Q4K_BYTES
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, supers, _Q4K_BYTES)
    d_dmin = raw[:, :, :4].copy().view(np.float16).astype(np.float32)  # [n, S, 2]
    packed = raw[:, :, 4:16].reshape(n, supers, 3, 4)
    lo6, hi6, split = packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]
    sc = np.concatenate([lo6 & 0x3F, (split & 0x0F) | ((lo6 >> 2) & 0x30)], axis=-1)
    m = np.concatenate([hi6 & 0x3F, (split >> 4) | ((hi6 >> 2) & 0x30)], axis=-1)
    sub = np.stack([sc, m], axis=-1).reshape(n, supers * 8, 2)
    # Within each 64 values of a super-block, ggml's 32 bytes hold the first
    # 32 codes in their low nibbles and the next 32 in their high nibbles.
    qs = raw[:, :, 16:].reshape(n, supers, 4, 1, 32)
    codes = ((qs >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)) & 0x0F).reshape(
        n, -1, 2, 4
    )
    # Ours: byte b of a word holds K offsets b (low) and 4 + b (high).
    paired = codes[:, :, 0] | (codes[:, :, 1] << 4)
    words = np.ascontiguousarray(paired).view("<u4").reshape(n, -1).astype(np.uint32)
    return (
        _columns_to_panels(words),
        _columns_to_panels(sub),
        _columns_to_panels(d_dmin),
    )
