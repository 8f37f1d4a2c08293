"""Runs the custom panel kernels in small graphs, for the kernel tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, TensorValue

from gpt2_lmhead_model.kernels import KERNELS_DIR
from gpt2_lmhead_model.kernels.panels import PANEL, pack_panels


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
