"""What the kernel tests share: small graphs around one kernel, operands,
and the NumPy arithmetic each kernel is held to."""

from __future__ import annotations

import math
from collections.abc import Callable

import gguf
import numpy as np
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, TensorValue

from gpt2_lmhead_model.kernels import KERNELS_DIR
from gpt2_lmhead_model.kernels.panels import (
    PANEL,
    Q4K_ACTIVATION_LEVELS,
    Q4K_SUB,
    Q8_CODE_OFFSET,
    pack_panels,
)
from gpt2_max.gguf_quants import quantize


def compile_kernel_graph(
    name: str,
    build: Callable[..., list[TensorValue]],
    with_bias: bool,
    weight_dtype: DType = DType.float32,
) -> Callable[..., list[np.ndarray]]:
    """One graph over symbolic M, K, N; returns `run(x, w_in_out[, b])`.

    With a half `weight_dtype`, `w_in_out` is rounded to it (`to_half`)
    before it is packed."""
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(weight_dtype, ["panels", "k", PANEL], cpu),
    ]
    if with_bias:
        types.append(TensorType(DType.float32, ["n"], cpu))
    with Graph(name, input_types=types, custom_extensions=[KERNELS_DIR]) as graph:
        graph.output(*build(*(v.tensor for v in graph.inputs)))
    model = InferenceSession(devices=[CPU()]).load(graph)

    def run(x: np.ndarray, w: np.ndarray, *rest: np.ndarray) -> list[np.ndarray]:
        panels = Buffer.from_numpy(pack_panels(to_half(w, weight_dtype)))
        if weight_dtype == DType.bfloat16:
            panels = panels.view(DType.bfloat16)
        args = [Buffer.from_numpy(np.ascontiguousarray(a)) for a in (x, *rest)]
        outs = model.execute(args[0], panels, *args[1:])
        return [o.to_numpy() for o in outs]

    return run


def to_half(w: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 `w` in `dtype`'s NumPy form: float16, bfloat16 as its 16-bit
    words (rounded to nearest even, as ggml), float32 unchanged."""
    if dtype == DType.float16:
        return w.astype(np.float16)
    if dtype == DType.bfloat16:
        bits = w.astype(np.float32).view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return w


def widened(w: np.ndarray, dtype: DType) -> np.ndarray:
    """The float32 values `to_half(w, dtype)` holds."""
    half = to_half(w, dtype)
    if dtype == DType.bfloat16:
        return (half.astype(np.uint32) << 16).view(np.float32)
    return half.astype(np.float32)


def operands(
    m: int, k: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x ~ N(0, 1), W ~ N(0, 1/K), b ~ N(0, 1): outputs of order one."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b


def reference(x, w, b, act: str) -> np.ndarray:
    return activated(x.astype(np.float64) @ w.astype(np.float64) + b, act)


def activated(z: np.ndarray, act: str) -> np.ndarray:
    if act == "gelu":
        erf = np.vectorize(math.erf)
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))
    if act == "gelu_new":
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    return z


Q4_K = gguf.GGMLQuantizationType.Q4_K


def q4k_operands(
    m: int, k: int, n: int, seed: int, qtype: gguf.GGMLQuantizationType = Q4_K
):
    """x, the ggml blocks (Q4_K, or `qtype`) of a `[n, k]` matrix, its
    dequantized `[k, n]` transpose, and a bias."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    blocks = quantize(w, qtype)
    dequantized = gguf.quants.dequantize(blocks, qtype)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, blocks, dequantized.reshape(n, k).T, b


def emulated(
    x: np.ndarray,
    blocks: np.ndarray,
    b: np.ndarray,
    act: str,
    qtype: gguf.GGMLQuantizationType = Q4_K,
):
    """The kernel's arithmetic in float64: x rounded to int8 on a scale per
    32 values, times the dequantized matrix (also `panel_q6k_linear`'s)."""
    n, k = blocks.shape[0], x.shape[1]
    blocked = x.reshape(x.shape[0], -1, Q4K_SUB)
    amax = np.abs(blocked).max(axis=-1, keepdims=True)
    inv = (amax > 0) * np.float32(Q4K_ACTIVATION_LEVELS) / np.where(amax > 0, amax, 1)
    x8 = np.round(blocked * inv.astype(np.float32))
    rounded = (x8 * (amax / np.float32(Q4K_ACTIVATION_LEVELS))).reshape(x.shape)
    w = gguf.quants.dequantize(blocks, qtype).reshape(n, k)
    return activated(rounded.astype(np.float64) @ w.T.astype(np.float64) + b, act)


def q8_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """`[P, K/4, PANEL]` words -> the signed codes `[P, K, PANEL]` as float32."""
    panels = codes.shape[0]
    as_bytes = codes.transpose(0, 2, 1).copy().view(np.uint8)  # [P, PANEL, K]
    signed = as_bytes.astype(np.int16) - Q8_CODE_OFFSET
    return signed.reshape(panels, PANEL, k).transpose(0, 2, 1).astype(np.float32)
