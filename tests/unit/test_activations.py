"""Every activation the config may name computes transformers' formula."""

from __future__ import annotations

import numpy as np
import torch
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType
from transformers.activations import ACT2FN

from gpt2_lmhead_model.layers import ACTIVATIONS


def test_activations_match_transformers():
    names = sorted(ACTIVATIONS)
    x = np.linspace(-8, 8, 2049, dtype=np.float32)
    with Graph(
        "activations",
        input_types=[TensorType(DType.float32, [x.size], DeviceRef.CPU())],
    ) as graph:
        graph.output(*(ACTIVATIONS[n](graph.inputs[0].tensor) for n in names))
    model = InferenceSession(devices=[CPU()]).load(graph)
    outputs = model.execute(Buffer.from_numpy(x))
    for name, out in zip(names, outputs, strict=True):
        expected = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(
            out.to_numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name
        )
