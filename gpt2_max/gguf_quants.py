"""ggml's Q4_K and Q6_K quantizers in numpy, next to the formats `gguf` has.

`gguf.quants.quantize` covers F32, F16, BF16, Q8_0 and Q4_0 but raises
NotImplementedError for the K-quants, which are what llama.cpp's Q4_K_M and
Q6_K files hold and what MAX's CPU matmuls read. The two quantizers here
follow ggml's reference code (ggml-quants.c: `quantize_row_q4_K_ref` with
`make_qkx2_quants`, `quantize_row_q6_K_ref` with `make_qx_quants`), which is
also what `llama-quantize` runs when it is given no importance matrix. They
work on every block at once and write ggml's structs byte for byte:

- `block_q4_K`, 144 bytes per 256 values: `d` and `dmin` (fp16), `scales[12]`
  (eight 6-bit sub-block scales and eight 6-bit mins, packed the way
  `get_scale_min_k4` unpacks them), `qs[128]` (4-bit quants; byte `l` of
  32-byte group `c` holds value `64c + l` low and `64c + 32 + l` high).
- `block_q6_K`, 210 bytes per 256 values: `ql[128]` (low 4 bits), `qh[64]`
  (high 2 bits), `scales[16]` (int8, one per 16 values), `d` (fp16).

Same search (including ggml's quirk that a winning candidate of
`make_qkx2_quants` moves the grid's origin for the candidates after it), same
grids, same fp16 rounding. Two shortcuts, neither of which touches the
format:
- sums are numpy's float32 reductions, not C's sequential loops;
- `make_qkx2_quants` scores each candidate grid from the weighted sums it
  already has (the squared error expanded, in float64) rather than with a
  second pass over the 32 values.
So where two candidate grids score within float rounding of each other the
pick can differ from llama-quantize's (whose own pick there depends on
whether the compiler fused the multiply-adds). Against a float32
line-by-line port of the C, 200 random blocks (normal, t(2), uniform,
offset normal) came out byte-identical for 191 (Q4_K) and 192 (Q6_K); the
rest differ in one sub-block's pick (and through it, at times, the block's
scales), with a round-trip error as often lower than the port's as higher.
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType

# ggml's GROUP_MAX_EPS: a group whose largest |x| is below this is all zero.
_GROUP_MAX_EPS = np.float32(1e-15)
# Blocks per numpy pass: keeps the temporaries of the grid search in cache.
_CHUNK_BLOCKS = 512

_F32 = np.float32


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Encodes `data` (rows along its last axis) as `qtype`.

    Returns what `gguf.GGUFWriter.add_tensor(..., raw_dtype=qtype)` takes:
    float32 for F32, float16 for F16, else uint8 `[..., bytes_per_row]`.
    """
    data = np.asarray(data)
    if qtype == GGMLQuantizationType.F32:
        return data.astype(np.float32, copy=False)
    if qtype == GGMLQuantizationType.F16:
        return data.astype(np.float16, copy=False)
    if qtype not in _BLOCK_QUANTIZERS and qtype not in _GGUF_QUANTIZED:
        raise NotImplementedError(f"no quantizer for {qtype.name}")
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if data.ndim == 0 or data.shape[-1] % block_size != 0:
        raise ValueError(
            f"cannot quantize a tensor of shape {list(data.shape)} to "
            f"{qtype.name}: its rows must be a multiple of {block_size} values"
        )
    x = data.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(
            f"cannot quantize a tensor of shape {list(data.shape)} to "
            f"{qtype.name}: it holds NaN or infinite values"
        )
    if qtype in _GGUF_QUANTIZED:
        return gguf.quants.quantize(x, qtype)

    blocks = x.reshape(-1, block_size)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    quantize_blocks = _BLOCK_QUANTIZERS[qtype]
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        out[start:stop] = quantize_blocks(blocks[start:stop])
    return out.reshape(*data.shape[:-1], data.shape[-1] // block_size * type_size)


# --------------------------------------------------------------------- Q4_K


def _make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's `make_qkx2_quants` (use_mad=false) for every row of `x` at once.

    Fits `x ~ scale * L - the_min` with `L` in [0, nmax] and `the_min >= 0`:
    tries the min..max grid stretched by `rmin + rdelta * i` steps, refits
    scale and min of each by weighted least squares, keeps the lowest
    weighted squared error. As in ggml, a candidate that wins moves the
    grid's origin to its fitted min for the candidates after it. Returns
    (scale, the_min, L).
    """
    nmax_f = _F32(nmax)
    mn = np.minimum(x.min(axis=1), _F32(0))
    xmax = x.max(axis=1)
    flat = xmax == mn
    wx = w * x
    sum_w = w.sum(axis=1)
    sum_x = wx.sum(axis=1)
    sum_x2 = np.einsum("ij,ij->i", wx, x).astype(np.float64)

    def grid(iscale: np.ndarray, origin: np.ndarray) -> np.ndarray:
        q = x - origin[:, None]
        q *= iscale[:, None]
        np.rint(q, out=q)
        return np.clip(q, _F32(0), nmax_f, out=q)

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.einsum("ij,ij->i", w, q),
            np.einsum("ij,ij->i", w * q, q),
            np.einsum("ij,ij->i", wx, q),
        )

    def error(
        scale: np.ndarray,
        origin: np.ndarray,
        sl: np.ndarray,
        sl2: np.ndarray,
        sxl: np.ndarray,
    ) -> np.ndarray:
        # sum w (scale*L + origin - x)^2, expanded into the sums already taken.
        s, m = scale.astype(np.float64), origin.astype(np.float64)
        return (
            s * s * sl2
            + 2 * s * m * sl
            - 2 * s * sxl
            + m * m * sum_w
            - 2 * m * sum_x
            + sum_x2
        )

    iscale = nmax_f / _nonzero(xmax - mn)
    best_scale = _F32(1) / iscale
    best_iscale, best_origin = iscale, mn
    best_err = error(best_scale, mn, *sums(grid(iscale, mn)))
    for i in range(nstep + 1):
        span = xmax - mn
        iscale = np.where(
            span > 0, (_F32(rmin) + _F32(rdelta) * _F32(i) + nmax_f) / _nonzero(span), 0
        ).astype(np.float32)
        sl, sl2, sxl = sums(grid(iscale, mn))
        det = sum_w * sl2 - sl * sl
        ok = det > 0
        det = _nonzero(det)
        this_scale = (sum_w * sxl - sum_x * sl) / det
        this_min = (sl2 * sum_x - sl * sxl) / det
        positive = this_min > 0
        this_min = np.where(positive, _F32(0), this_min)
        this_scale = np.where(positive, sxl / _nonzero(sl2), this_scale)
        err = error(this_scale, this_min, sl, sl2, sxl)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, this_scale, best_scale)
        # The winning grid was laid from the origin in force before `mn` moves.
        best_iscale = np.where(better, iscale, best_iscale)
        best_origin = np.where(better, mn, best_origin)
        mn = np.where(better, this_min, mn)

    levels = grid(best_iscale, best_origin)
    levels[flat] = 0
    return np.where(flat, _F32(0), best_scale), -mn, levels


def _q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    """`quantize_row_q4_K_ref` on `[n, 256]` float32 -> `[n, 144]` uint8."""
    nb = blocks.shape[0]
    x = blocks.reshape(nb * 8, 32)
    av_x = np.sqrt((x * x).sum(axis=1) / _F32(32))
    w = av_x[:, None] + np.abs(x)
    scales, mins, levels = _make_qkx2_quants(x, w, 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)

    # The eight sub-block scales (and mins) as 6-bit multiples of the
    # block's fp16 d (dmin).
    max_scale = np.maximum(scales.max(axis=1), _F32(0))
    max_min = np.maximum(mins.max(axis=1), _F32(0))
    inv_scale = np.where(max_scale > 0, _F32(63) / _nonzero(max_scale), _F32(0))
    inv_min = np.where(max_min > 0, _F32(63) / _nonzero(max_min), _F32(0))
    ls = _six_bits(inv_scale[:, None] * scales)
    lm = _six_bits(inv_min[:, None] * mins)
    d = (max_scale / _F32(63)).astype(np.float16)
    dmin = (max_min / _F32(63)).astype(np.float16)

    # Requantize against the scales as stored; a sub-block whose scale
    # rounded to 0 keeps the search's quants (they dequantize to -m anyway).
    d_sub = d.astype(np.float32)[:, None] * ls
    m_sub = dmin.astype(np.float32)[:, None] * lm
    live = d_sub != 0
    xs = blocks.reshape(nb, 8, 32)
    q = np.rint((xs + m_sub[..., None]) / np.where(live, d_sub, _F32(1))[..., None])
    q = np.clip(q, 0, 15)
    q = np.where(live[..., None], q, levels.reshape(nb, 8, 32)).astype(np.uint8)

    packed = np.empty((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)

    q = q.reshape(nb, 4, 2, 32)
    qs = q[:, :, 0, :] | (q[:, :, 1, :] << 4)
    return np.concatenate(
        [
            d.view(np.uint8).reshape(nb, 2),
            dmin.view(np.uint8).reshape(nb, 2),
            packed,
            qs.reshape(nb, 128),
        ],
        axis=1,
    )


def _six_bits(values: np.ndarray) -> np.ndarray:
    # ggml: uint8_t l = nearest_int(v); l = MIN(63, l).
    return np.minimum(np.rint(values).astype(np.int64) & 0xFF, 63).astype(np.uint8)


def _nonzero(values: np.ndarray) -> np.ndarray:
    return np.where(values != 0, values, _F32(1))


# --------------------------------------------------------------------- Q6_K


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(rmse_type=1, qw=NULL)` for every row at once.

    Symmetric grid `x ~ scale * (L - nmax)` with `L` in [0, 2*nmax): the
    largest |x| lands on -nmax, then 18 stretches of that grid are tried
    and the one that maximises the x^2-weighted fit kept. Returns
    (scale, L).
    """
    nmax_f = _F32(nmax)
    rows = np.arange(x.shape[0])
    imax = np.abs(x).argmax(axis=1)
    vmax = x[rows, imax]
    zero = np.abs(vmax) < _GROUP_MAX_EPS
    vmax = np.where(zero, _F32(1), vmax)
    w = x * x
    wx = w * x

    def grid(iscale: np.ndarray) -> np.ndarray:
        q = x * iscale[:, None]
        np.rint(q, out=q)
        return np.clip(q, -nmax_f, nmax_f - 1, out=q)

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.einsum("ij,ij->i", wx, q), np.einsum("ij,ij->i", w * q, q)

    best_iscale = -nmax_f / vmax
    sumlx, suml2 = sums(grid(best_iscale))
    scale = np.where(suml2 != 0, sumlx / _nonzero(suml2), _F32(0))
    best = scale * sumlx
    for i in (*range(-9, 0), *range(1, 10)):
        iscale = -(nmax_f + _F32(0.1) * _F32(i)) / vmax
        sumlx, suml2 = sums(grid(iscale))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        this_scale = sumlx / _nonzero(suml2)
        scale = np.where(better, this_scale, scale)
        best = np.where(better, this_scale * sumlx, best)
        best_iscale = np.where(better, iscale, best_iscale)

    levels = grid(best_iscale) + nmax_f
    levels[zero] = 0
    return np.where(zero, _F32(0), scale), levels


def _q6_k_blocks(blocks: np.ndarray) -> np.ndarray:
    """`quantize_row_q6_K_ref` on `[n, 256]` float32 -> `[n, 210]` uint8."""
    nb = blocks.shape[0]
    rows = np.arange(nb)
    scales, levels = _make_qx_quants(blocks.reshape(nb * 16, 16), 32)
    scales = scales.reshape(nb, 16)

    # The sixteen sub-block scales as int8 multiples of the block's fp16 d;
    # the largest-magnitude one lands on -128.
    imax = np.abs(scales).argmax(axis=1)
    max_scale = scales[rows, imax]
    zero = np.abs(max_scale) < _GROUP_MAX_EPS
    iscale = _F32(-128) / np.where(zero, _F32(1), max_scale)
    d = np.where(zero, _F32(0), _F32(1) / iscale).astype(np.float16)
    sc = np.clip(np.rint(iscale[:, None] * scales), -128, 127).astype(np.int8)
    sc[zero] = 0

    # Requantize against the scales as stored; a sub-block whose scale
    # rounded to 0 keeps the search's quants (they dequantize to 0 anyway).
    d_sub = d.astype(np.float32)[:, None] * sc
    live = d_sub != 0
    xs = blocks.reshape(nb, 16, 16)
    q = np.rint(xs / np.where(live, d_sub, _F32(1))[..., None])
    q = np.clip(q, -32, 31) + 32
    q = np.where(live[..., None], q, levels.reshape(nb, 16, 16))
    q[zero] = 0  # ggml zeroes an all-zero block outright
    q = q.astype(np.uint8).reshape(nb, 2, 4, 32)

    ql = (q[:, :, 0:2, :] & 0xF) | ((q[:, :, 2:4, :] & 0xF) << 4)
    qh = (
        (q[:, :, 0, :] >> 4)
        | ((q[:, :, 1, :] >> 4) << 2)
        | ((q[:, :, 2, :] >> 4) << 4)
        | ((q[:, :, 3, :] >> 4) << 6)
    )
    return np.concatenate(
        [
            ql.reshape(nb, 128),
            qh.reshape(nb, 64),
            sc.view(np.uint8),
            d.view(np.uint8).reshape(nb, 2),
        ],
        axis=1,
    )


_BLOCK_QUANTIZERS = {
    GGMLQuantizationType.Q4_K: _q4_k_blocks,
    GGMLQuantizationType.Q6_K: _q6_k_blocks,
}
# Formats whose quantizer `gguf` ships (bit-exact with ggml's reference).
_GGUF_QUANTIZED = {
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.BF16,  # round to nearest even, as llama.cpp
}
