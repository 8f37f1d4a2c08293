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
) -> Callable[..., list[np.ndarray]]:
    """One graph over symbolic M, K, N; returns `run(x, w_in_out[, b])`."""
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["m", "k"], cpu),
        TensorType(DType.float32, ["panels", "k", PANEL], cpu),
    ]
    if with_bias:
        types.append(TensorType(DType.float32, ["n"], cpu))
    with Graph(name, input_types=types, custom_extensions=[KERNELS_DIR]) as graph:
        graph.output(*build(*(v.tensor for v in graph.inputs)))
    model = InferenceSession(devices=[CPU()]).load(graph)

    def run(x: np.ndarray, w: np.ndarray, *rest: np.ndarray) -> list[np.ndarray]:
        args = [x, pack_panels(w), *rest]
        outs = model.execute(
            *(Buffer.from_numpy(np.ascontiguousarray(a)) for a in args)
        )
        return [o.to_numpy() for o in outs]

    return run


def operands(
    m: int, k: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x ~ N(0, 1), W ~ N(0, 1/K), b ~ N(0, 1): outputs of order one."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b
