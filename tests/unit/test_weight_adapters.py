"""The safetensors adapter: names, Conv1D transposes, tying, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from max.dtype import DType
from max.graph import DeviceRef
from max.graph.weights import WeightData
from transformers import GPT2Config

from gpt2_lmhead_model.routing import route_weights
from gpt2_lmhead_model.weight_adapters import (
    CheckpointMismatch,
    adapt_weights,
    graph_weight_shapes,
    plan_weights,
)

GPU = DeviceRef.GPU()
SMALL = dict(
    vocab_size=11,
    n_positions=7,
    n_embd=6,
    n_head=2,
    n_layer=2,
    n_inner=10,
    architectures=["GPT2LMHeadModel"],
)


def hf_state(
    config: GPT2Config,
    *,
    prefix: str = "",
    buffers: bool = False,
    lm_head: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A checkpoint as transformers stores it: Conv1D weights [in, out]."""
    rng = np.random.default_rng(seed)
    e, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    shapes = {
        "wte.weight": (config.vocab_size, e),
        "wpe.weight": (config.n_positions, e),
    }
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (e,),
            p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (e, 3 * e),
            p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e),
            p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,),
            p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (e, inner),
            p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (inner, e),
            p + "mlp.c_proj.bias": (e,),
        }
        if buffers:
            shapes |= {
                p + "attn.bias": (1, 1, config.n_positions, config.n_positions),
                p + "attn.masked_bias": (),
            }
    shapes |= {"ln_f.weight": (e,), "ln_f.bias": (e,)}
    state = {
        prefix + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()
    }
    if lm_head:
        state["lm_head.weight"] = rng.standard_normal((config.vocab_size, e)).astype(
            np.float32
        )
    return state


def as_weights(state: dict[str, np.ndarray]) -> dict[str, WeightData]:
    return {k: WeightData.from_numpy(v, k) for k, v in state.items()}


def adapt(
    config: GPT2Config,
    state: dict[str, np.ndarray],
    dtype=DType.float32,
    device=GPU,
):
    """The graph's weights as loading makes them: adapted, then packed as
    routed (on a GPU every matrix is a plain `[out, in]` one)."""
    stored = adapt_weights(as_weights(state), config)
    return route_weights(stored, config.n_layer, device, dtype).pack(stored)


def shapes_of(state):
    return {k: v.shape for k, v in state.items()}


@pytest.fixture
def tied():
    return GPT2Config(**SMALL)


@pytest.fixture
def untied():
    return GPT2Config(**SMALL, tie_word_embeddings=False)


def test_prefixed_and_bare_names_map_to_the_same_weights(tied):
    bare = adapt(tied, hf_state(tied))
    prefixed = adapt(tied, hf_state(tied, prefix="transformer."))
    assert bare.keys() == prefixed.keys() == graph_weight_shapes(tied).keys()
    for name in bare:
        np.testing.assert_array_equal(
            np.from_dlpack(bare[name].data), np.from_dlpack(prefixed[name].data)
        )


def test_conv1d_weights_are_transposed_and_others_copied(tied):
    state = hf_state(tied)
    out = adapt(tied, state)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        key = f"h.1.{name}.weight"
        got = np.from_dlpack(out[key].data)
        np.testing.assert_array_equal(got, state[key].T)
        assert tuple(out[key].shape) == graph_weight_shapes(tied)[key]
        bias = f"h.1.{name}.bias"
        np.testing.assert_array_equal(np.from_dlpack(out[bias].data), state[bias])
    np.testing.assert_array_equal(
        np.from_dlpack(out["wpe.weight"].data), state["wpe.weight"]
    )


def test_mask_buffers_are_dropped(tied):
    plan = plan_weights(shapes_of(hf_state(tied, buffers=True)), tied)
    dropped = {m.source for m in plan if m.action == "dropped"}
    assert dropped == {
        f"h.{i}.attn.{b}" for i in range(2) for b in ("bias", "masked_bias")
    }
    out = adapt(tied, hf_state(tied, buffers=True))
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias")) for k in out)


def test_tied_head_is_wte_and_a_stored_copy_is_ignored(tied):
    plan = plan_weights(shapes_of(hf_state(tied, lm_head=True)), tied)
    head = [m for m in plan if m.target == "lm_head.weight"]
    assert [m.action for m in head] == ["tied"] and head[0].source == "wte.weight"
    assert "lm_head.weight" not in adapt(tied, hf_state(tied, lm_head=True))


def test_untied_head_is_loaded(untied):
    state = hf_state(untied, lm_head=True)
    out = adapt(untied, state)
    np.testing.assert_array_equal(
        np.from_dlpack(out["lm_head.weight"].data), state["lm_head.weight"]
    )


def test_untied_head_missing_is_refused(untied):
    with pytest.raises(
        CheckpointMismatch,
        match=r"missing tensor lm_head\.weight \(expected \[11, 6\]\)",
    ):
        adapt(untied, hf_state(untied))


def test_missing_tensor_names_it(tied):
    state = hf_state(tied, prefix="transformer.")
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(
        CheckpointMismatch,
        match=r"missing tensor h\.1\.mlp\.c_fc\.bias \(expected \[10\]\)",
    ):
        adapt(tied, state)


def test_unexpected_tensor_names_it(tied):
    state = hf_state(tied)
    state["h.2.ln_1.weight"] = np.zeros(6, np.float32)
    with pytest.raises(
        CheckpointMismatch, match=r"unexpected tensor h\.2\.ln_1\.weight \[6\]"
    ):
        adapt(tied, state)


def test_misshaped_tensor_names_it_and_both_shapes(tied):
    state = hf_state(tied)
    state["h.0.attn.c_attn.weight"] = np.zeros((18, 6), np.float32)  # Linear layout
    with pytest.raises(
        CheckpointMismatch,
        match=r"h\.0\.attn\.c_attn\.weight has shape \[18, 6\], expected \[6, 18\]",
    ):
        adapt(tied, state)


def test_all_problems_are_reported_together(tied):
    state = hf_state(tied)
    del state["wpe.weight"]
    state["ln_f.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointMismatch) as err:
        adapt(tied, state)
    assert "wpe.weight" in str(err.value) and "ln_f.bias" in str(err.value)


def test_cast_to_bfloat16_keeps_values(tied):
    state = hf_state(tied)
    out = adapt(tied, state, DType.bfloat16)
    assert {w.dtype for w in out.values()} == {DType.bfloat16}
    key = "h.0.mlp.c_fc.weight"
    back = np.from_dlpack(out[key].astype(DType.float32).to_buffer())
    np.testing.assert_allclose(back, state[key].T, rtol=1e-2)


def test_cpu_head_layout_is_the_transposed_head(tied, untied):
    # On CPU in bfloat16 the head is held [n_embd, vocab] (`Dense.in_out`).
    # Tied: a transposed copy of wte; untied: the head, transposed.
    def words(data):
        return data.to_buffer().view(DType.uint16).to_numpy()

    state = hf_state(tied)
    out = adapt(tied, state, DType.bfloat16, DeviceRef.CPU())
    np.testing.assert_array_equal(
        words(out["lm_head.weight"]), words(out["wte.weight"]).T
    )
    assert out.keys() == graph_weight_shapes(tied).keys() | {"lm_head.weight"}

    state = hf_state(untied, lm_head=True)
    out = adapt(untied, state, DType.bfloat16, DeviceRef.CPU())
    head = adapt(untied, state, DType.bfloat16)["lm_head.weight"]  # [out, in]
    np.testing.assert_array_equal(words(out["lm_head.weight"]), words(head).T)
    assert tuple(out["lm_head.weight"].shape) == (6, 11)
