"""Packing weights into the panels the panel kernels stream (`panels.mojo`)."""

from __future__ import annotations

import numpy as np

PANEL = 32
"""Columns per panel; must equal `PANEL` in `panels.mojo`. A multiple of
every float32 vector width (4 lanes NEON or SSE, 8 AVX2, 16 AVX-512)."""

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


Q8_CODES_PER_WORD = 4
"""int8 codes per uint32 of `pack_q8_panels`' codes."""
Q8_CODE_OFFSET = 128
"""`pack_q8_panels` stores `q + 128` on every target: the x86 byte dot
product takes one operand unsigned (ARM's `sdot` flips the top bit back:
`byte_dot.mojo`)."""


def pack_q8_panels(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml Q8_0 rows `[N, K/32 * 34]` bytes (per block: an fp16 scale, then
    32 int8) -> code panels `[ceil(N / PANEL), K/4, PANEL]` uint32 (per
    column, four K-consecutive codes plus 128, the first in the low byte)
    and float32 scales `[ceil(N / PANEL), K/32, PANEL]`, for
    `panel_q8_linear`. Column n of the panels is row n of the ggml matrix;
    columns past N have code 0 and scale 0."""
    n, row_bytes = blocks.shape
    if row_bytes % (Q8_BLOCK + 2):
        raise ValueError(f"pack_q8_panels: {row_bytes} bytes is not whole Q8_0 blocks")
    nb = row_bytes // (Q8_BLOCK + 2)
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, nb, Q8_BLOCK + 2)
    scales = raw[:, :, :2].copy().view(np.float16).reshape(n, nb).astype(np.float32)
    codes = raw[:, :, 2:] ^ np.uint8(Q8_CODE_OFFSET)  # two's complement + 128
    words = codes.reshape(n, nb * Q8_BLOCK).copy().view("<u4")  # [N, K/4]
    return _columns_to_panels(words), _columns_to_panels(scales)


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


Q6K_SUPER = 256
"""Values per super-block in ggml's Q6_K (`QK_K`): an fp16 `d`."""
Q6K_GROUP = 16
"""Values per int8 multiplier `sc` in Q6_K."""
Q6K_OFFSET = 32
"""Q6_K's 6-bit codes are stored unsigned: the weight is `d*sc * (q - 32)`."""
_Q6K_BYTES = 210  # 128 of low nibbles, 64 of high bit pairs, 16 sc, fp16 d


def q6k_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml Q6_K rows `[N, K/256 * 210]` bytes -> codes `[N, K]` uint8 (0-63),
    multipliers `[N, K/16]` int8 and scales `[N, K/256]` float32, in K order."""
    n, row_bytes = blocks.shape
    if row_bytes % _Q6K_BYTES:
        raise ValueError(f"q6k_codes: {row_bytes} bytes is not whole Q6_K blocks")
    supers = row_bytes // _Q6K_BYTES
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, supers, _Q6K_BYTES)
    # Per 128 values, 64 bytes of nibbles and 32 of high bit pairs: the low
    # nibble of byte l (0-63) is value l's, the high one value 64 + l's;
    # bits 2j..2j+1 of high byte l (0-31) are value 32j + l's.
    ql = raw[:, :, :128].reshape(n, supers, 2, 2, 32)  # [.., half, i, l]: byte 32i + l
    qh = raw[:, :, 128:192].reshape(n, supers, 2, 1, 32)
    low = np.stack([ql & 0x0F, ql >> 4], axis=3)  # [.., half, nibble, i, l]
    low = low.reshape(n, supers, 2, 4, 32)  # value 32j + l, j = 2*nibble + i
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)
    high = (qh >> shifts) & 0x03
    codes = (low | (high << 4)).reshape(n, supers * Q6K_SUPER)
    sc = raw[:, :, 192:208].copy().view(np.int8).reshape(n, -1)
    d = raw[:, :, 208:210].copy().view(np.float16).reshape(n, supers)
    return codes, sc, d.astype(np.float32)


def pack_q6k_panels(
    blocks: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ggml Q6_K rows `[N, K/256 * 210]` bytes -> for `panel_q6k_linear`:
    - low nibbles `[P, K/8, PANEL]` uint32, as `pack_q4k_panels`' codes:
      byte b of a word holds K offsets b (low nibble) and 4 + b (high);
    - high bit pairs `[P, K/16, PANEL]` uint32, one word per 16 values:
      bits 2j..2j+1 of byte b hold those of K offset 4j + b;
    - multipliers `sc` `[P, K/16, PANEL]` int8;
    - scales `d` `[P, K/256, PANEL]` float32;
    P = ceil(N / PANEL), zero-padded past N. Column n of the panels is row n
    of the ggml matrix; its weight at k is `d*sc * (code - 32)`."""
    codes, sc, d = q6k_codes(blocks)
    n, k = codes.shape
    octets = codes.reshape(n, k // 8, 2, 4)
    low = (octets[:, :, 0] & 0x0F) | ((octets[:, :, 1] & 0x0F) << 4)
    low_words = np.ascontiguousarray(low).view("<u4").reshape(n, -1)
    quads = (codes >> 4).reshape(n, k // Q6K_GROUP, 4, 4)  # [.., j, b]
    high = (
        quads[:, :, 0] | quads[:, :, 1] << 2 | quads[:, :, 2] << 4 | quads[:, :, 3] << 6
    )
    high_words = np.ascontiguousarray(high).view("<u4").reshape(n, -1)
    return (
        _columns_to_panels(low_words.astype(np.uint32)),
        _columns_to_panels(high_words.astype(np.uint32)),
        _columns_to_panels(sc),
        _columns_to_panels(d),
    )
