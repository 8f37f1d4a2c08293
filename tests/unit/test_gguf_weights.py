"""The GGUF loader (`gguf_weights`): what stays packed for the quantized
kernels, what is dequantized, and the files it refuses. No graph is
compiled here, except that the last test loads through MAX's own
pipeline, which refuses the file before compiling."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from max.dtype import DType
from max.graph import DeviceRef
from max.graph.quantization import QuantizationEncoding
from transformers import AutoConfig

from gpt2_lmhead_model.formats import Dense, FloatPanels, Q4KPanels, Q6KPanels, Q8Panels
from gpt2_lmhead_model.gguf_weights import (
    adapt_tensors,
    check_metadata,
    gguf_name,
    gpt2_name,
    metadata_of,
    plan,
)
from gpt2_lmhead_model.routing import route_weights
from gpt2_lmhead_model.weight_adapters import CheckpointMismatch
from gpt2_max.checkpoints import DISTILGPT2_CONFIG, write_checkpoint
from gpt2_max.gguf_export import write_gguf

CONFIG = {
    **DISTILGPT2_CONFIG,
    "n_embd": 256,
    "n_head": 4,
    "n_layer": 2,
    "n_inner": 512,
    "n_positions": 64,
    "n_ctx": 64,
}
MATMULS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-load")
    checkpoint = write_checkpoint(root / "ckpt", CONFIG, seed=2)
    paths = {
        e: write_gguf(checkpoint, root / f"{e}.gguf", e) for e in ("f32", "q4_k_m")
    }
    return checkpoint, paths


CPU, GPU = DeviceRef.CPU(), DeviceRef.GPU()


def _tensors(path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def load(tensors, hf_config, device=CPU, dtype=DType.float32):
    """What loading makes of a file's tensors: the routing plan, and the
    graph's weights packed as it says."""
    stored = adapt_tensors(tensors, hf_config)
    routed = route_weights(stored, hf_config.n_layer, device, dtype)
    return routed, routed.pack(stored)


def test_names_round_trip():
    for name in ("wte.weight", "h.11.attn.c_attn.bias", "h.3.mlp.c_proj.weight"):
        assert gpt2_name(gguf_name(name)) == name
    assert gguf_name("h.0.mlp.c_fc.weight") == "blk.0.ffn_up.weight"
    assert gpt2_name("output.weight") == "lm_head.weight"
    assert gpt2_name("blk.0.attn_q.weight") is None  # llama's, not GPT-2's


def test_mixed_file_is_handed_on_as_stored_per_tensor(files):
    checkpoint, paths = files
    hf_config = AutoConfig.from_pretrained(checkpoint)
    tensors = _tensors(paths["q4_k_m"])
    stored = adapt_tensors(tensors, hf_config)

    for layer in range(CONFIG["n_layer"]):
        for matmul in MATMULS:
            name = f"h.{layer}.{matmul}.weight"
            assert stored[name].ggml_type == tensors[gguf_name(name)].tensor_type
            assert stored[f"h.{layer}.{matmul}.bias"].dtype == DType.float32
        assert stored[f"h.{layer}.ln_1.weight"].dtype == DType.float32
    types = {t.ggml_type for t in stored.values()}
    assert {gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K} <= types

    # On a GPU, where MAX's ggml kernels do not run, every matrix is
    # dequantized at load to exactly the stored values.
    _, out = load(tensors, hf_config, GPU, DType.float32)
    assert all(w.quantization_encoding is None for w in out.values())
    for name in ("h.1.mlp.c_fc.weight", "lm_head.weight"):
        raw = tensors[gguf_name(name)]
        expected = gguf.quants.dequantize(raw.data, raw.tensor_type)
        assert np.array_equal(np.from_dlpack(out[name].data), expected)

    # wte is gathered, one row per token: always float, values as stored.
    _, out = load(tensors, hf_config)
    wte = out["wte.weight"]
    assert wte.dtype == DType.float32 and wte.quantization_encoding is None
    assert tuple(wte.shape) == (CONFIG["vocab_size"], CONFIG["n_embd"])
    raw = tensors["token_embd.weight"]
    expected = gguf.quants.dequantize(raw.data, raw.tensor_type)
    assert np.array_equal(np.from_dlpack(wte.data), expected)


def test_float_file_on_cpu_in_bfloat16_stores_head_in_out(files):
    checkpoint, paths = files
    hf_config = AutoConfig.from_pretrained(checkpoint)
    routed, out = load(_tensors(paths["f32"]), hf_config, CPU, DType.bfloat16)
    assert routed["lm_head"] == Dense(DType.bfloat16, in_out=True)
    assert all(w.quantization_encoding is None for w in out.values())

    def words(data):
        return data.to_buffer().view(DType.uint16).to_numpy()

    assert np.array_equal(words(out["lm_head.weight"]), words(out["wte.weight"]).T)


def test_metadata_contradicting_config_is_refused(files):
    checkpoint, paths = files
    hf_config = AutoConfig.from_pretrained(checkpoint)
    metadata = metadata_of(gguf.GGUFReader(paths["f32"]))
    check_metadata(metadata, hf_config)  # agrees

    with pytest.raises(
        CheckpointMismatch, match=r"head_count=8 contradicts .* n_head=4"
    ):
        check_metadata({**metadata, "gpt2.attention.head_count": 8}, hf_config)
    with pytest.raises(CheckpointMismatch, match=r"general\.architecture is 'llama'"):
        check_metadata({**metadata, "general.architecture": "llama"}, hf_config)
    missing = dict(metadata)
    del missing["gpt2.block_count"]
    with pytest.raises(CheckpointMismatch, match=r"no gpt2\.block_count"):
        check_metadata(missing, hf_config)


def test_missing_and_misshaped_tensors_are_named(files):
    checkpoint, paths = files
    hf_config = AutoConfig.from_pretrained(checkpoint)
    shapes = {
        name: tuple(int(d) for d in reversed(t.shape.tolist()))
        for name, t in _tensors(paths["f32"]).items()
    }
    assert plan(shapes, hf_config)["blk.1.ffn_up.weight"] == "h.1.mlp.c_fc.weight"

    broken = dict(shapes)
    del broken["blk.1.ffn_up.weight"]
    broken["blk.0.attn_qkv.weight"] = (3 * 256, 128)
    broken["blk.0.attn_q.weight"] = (256, 256)
    with pytest.raises(CheckpointMismatch) as error:
        plan(broken, hf_config)
    message = str(error.value)
    assert "missing tensor blk.1.ffn_up.weight (expected [512, 256])" in message
    assert "tensor blk.0.attn_qkv.weight has shape [768, 128], expected [768, 256]" in (
        message
    )
    assert "unexpected tensor blk.0.attn_q.weight" in message


@pytest.mark.slow
def test_pipeline_refuses_contradicting_file_before_compiling(files, tmp_path):
    """Through MAX's own loading path, with a config.json that says 8 heads."""
    from gpt2_max.stepper import stepper

    checkpoint, paths = files
    liar = tmp_path / "liar"
    shutil.copytree(checkpoint, liar)
    config = json.loads((liar / "config.json").read_text())
    (liar / "config.json").write_text(json.dumps({**config, "n_head": 8}))
    with pytest.raises(Exception, match=r"gpt2.attention.head_count=4 contradicts"):
        with stepper(liar, [[1, 2]], 8, encoding="float32", weight_path=paths["f32"]):
            pass


def test_any_packed_matrix_is_padded_to_the_row_tile(tmp_path):
    """`n_inner` 528 (16.5 tiles): `c_fc` [528, 256] is packed Q4_0 and
    padded; `c_proj` [256, 528] has no whole Q4_0 (nor Q8_0) blocks per
    row, so the converter wrote F32, which runs on the float32 panels."""
    config = {**CONFIG, "n_inner": 528}
    checkpoint = write_checkpoint(tmp_path / "ckpt", config, seed=4)
    path = write_gguf(checkpoint, tmp_path / "q4_0.gguf", "q4_0")
    tensors = _tensors(path)
    routed, out = load(tensors, AutoConfig.from_pretrained(checkpoint))
    c_fc = out["h.0.mlp.c_fc.weight"]
    assert c_fc.quantization_encoding == QuantizationEncoding.Q4_0
    assert int(c_fc.shape[0]) == 544
    stored = np.asarray(tensors["blk.0.ffn_up.weight"].data, np.uint8)
    packed = np.from_dlpack(c_fc.data)
    assert np.array_equal(packed[:528], stored.reshape(528, -1))
    assert not packed[528:].any()
    f32 = gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.ffn_down.weight"].tensor_type == f32
    assert routed["h.0.mlp.c_proj"] == FloatPanels(DType.float32)


def test_q8_0_matrices_are_repacked_for_the_q8_kernel_on_cpu(tmp_path):
    """Rows of 160 are not whole Q4_K blocks, so a q4_k file holds Q8_0:
    on CPU each such matrix (and the tied head) becomes int8 code panels
    plus scales that rebuild exactly the stored values."""
    from gpt2_lmhead_model.kernels.panels import PANEL, Q8_BLOCK, pack_q8_panels

    from ..kernels.operands import q8_codes

    config = {**CONFIG, "n_embd": 160, "n_head": 5, "n_inner": 320}
    checkpoint = write_checkpoint(tmp_path / "ckpt", config, seed=4)
    tensors = _tensors(write_gguf(checkpoint, tmp_path / "q4_k.gguf", "q4_k"))
    hf_config = AutoConfig.from_pretrained(checkpoint)
    routed, out = load(tensors, hf_config)
    stored = tensors["blk.1.ffn_up.weight"]
    assert stored.tensor_type == gguf.GGMLQuantizationType.Q8_0
    q = np.from_dlpack(out["h.1.mlp.c_fc.weight"].data)
    scales = np.from_dlpack(out["h.1.mlp.c_fc.weight_scale"].data)
    assert q.dtype == np.uint32 and q.shape == (320 // PANEL, 160 // 4, PANEL)
    widened = q8_codes(q, 160) * np.repeat(scales, Q8_BLOCK, axis=1)
    dequantized = gguf.quants.dequantize(stored.data, stored.tensor_type)
    np.testing.assert_array_equal(
        widened.transpose(0, 2, 1).reshape(320, 160), dequantized.reshape(320, 160)
    )
    head_q, _ = pack_q8_panels(np.asarray(tensors["token_embd.weight"].data))
    assert np.array_equal(np.from_dlpack(out["lm_head.weight"].data), head_q)
    assert out["wte.weight"].dtype == DType.float32  # gathered, dequantized
    # Elsewhere (a GPU) the same file's Q8_0 is dequantized at load.
    off_routed, off = load(tensors, hf_config, GPU)
    assert off["h.1.mlp.c_fc.weight"].dtype == DType.float32
    assert not any(name.endswith("_scale") for name in off)
    assert routed["h.1.mlp.c_fc"] == Q8Panels() == routed["lm_head"]
    assert off_routed["h.1.mlp.c_fc"] == Dense(DType.float32)


def test_k_quant_matrices_are_repacked_for_their_kernels_on_cpu(files):
    """In a Q4_K_M file on CPU, each Q4_K matrix becomes code, multiplier
    and scale panels, and each Q6_K one (the head among them) low-nibble,
    high-bit, multiplier and scale panels, exactly as the packers make
    them from the stored blocks."""
    from gpt2_lmhead_model.kernels.panels import (
        PANEL,
        pack_q4k_panels,
        pack_q6k_panels,
    )

    packers = {
        gguf.GGMLQuantizationType.Q4_K: (
            Q4KPanels(),
            pack_q4k_panels,
            ("", "_sub_scales", "_super_scales"),
        ),
        gguf.GGMLQuantizationType.Q6_K: (
            Q6KPanels(),
            pack_q6k_panels,
            ("", "_high", "_multipliers", "_scales"),
        ),
    }
    checkpoint, paths = files
    hf_config = AutoConfig.from_pretrained(checkpoint)
    tensors = _tensors(paths["q4_k_m"])
    routed, out = load(tensors, hf_config)
    names = [f"h.{i}.{m}.weight" for i in range(CONFIG["n_layer"]) for m in MATMULS]
    for name in [*names, "lm_head.weight"]:
        stored = tensors[gguf_name(name)]
        fmt, pack, suffixes = packers[stored.tensor_type]
        assert routed[name.removesuffix(".weight")] == fmt
        expected = pack(np.asarray(stored.data).reshape(stored.data.shape[0], -1))
        for suffix, want in zip(suffixes, expected, strict=True):
            assert np.array_equal(np.from_dlpack(out[name + suffix].data), want)
        assert expected[0].shape[2] == PANEL
    assert {Q4KPanels(), Q6KPanels()} <= set(routed.formats.values())
    assert routed["lm_head"] == Q6KPanels()  # Q6_K in Q4_K_M


@pytest.mark.parametrize("encoding", ["f16", "bf16"])
def test_half_float_matrices_stay_half_width_in_panels_on_cpu(tmp_path, encoding):
    """F16/BF16 matrices (and the tied head) become half-width panels
    holding exactly the stored values, in the file's own dtype; elsewhere
    (a GPU) they are widened to float32 at load."""
    from gpt2_lmhead_model.formats import raw_array
    from gpt2_lmhead_model.kernels.panels import PANEL, pack_panels

    dtype = {"f16": DType.float16, "bf16": DType.bfloat16}[encoding]
    checkpoint = write_checkpoint(tmp_path / "ckpt", CONFIG, seed=7)
    tensors = _tensors(write_gguf(checkpoint, tmp_path / "half.gguf", encoding))
    hf_config = AutoConfig.from_pretrained(checkpoint)
    routed, out = load(tensors, hf_config)
    for name, stored_name in [
        *((f"h.1.{m}.weight", gguf_name(f"h.1.{m}.weight")) for m in MATMULS),
        ("lm_head.weight", "token_embd.weight"),  # tied: the head is wte's
    ]:
        stored = tensors[stored_name]
        assert stored.tensor_type.name == encoding.upper()
        assert routed[name.removesuffix(".weight")] == FloatPanels(dtype)
        assert out[name].dtype == dtype
        words = (
            np.asarray(stored.data)
            .view(np.uint16)
            .reshape([int(d) for d in reversed(stored.shape.tolist())])
        )
        packed = raw_array(out[name]).view(np.uint16)
        assert packed.shape[2] == PANEL
        assert np.array_equal(packed, pack_panels(words.T))
    assert out["wte.weight"].dtype == DType.float32  # gathered, widened
    off_routed, off = load(tensors, hf_config, GPU)
    assert off["h.1.mlp.c_fc.weight"].dtype == DType.float32
    assert set(off_routed.formats.values()) == {Dense(DType.float32)}


def test_a_bf16_file_name_is_linked_under_one_max_does_not_misread(tmp_path):
    """MAX 26.7 reads `bf16` in a weight file's name as a cast to bfloat16,
    which it refuses on CPU; `unpack` hands MAX a link instead."""
    from gpt2_max.gguf_unpack import unpack

    checkpoint = write_checkpoint(tmp_path / "ckpt", CONFIG, seed=7)
    path = write_gguf(checkpoint, tmp_path / "gpt2-BF16.gguf", "bf16")
    bare = unpack(path, tmp_path / "bare")
    assert bare.encoding == "float32"
    assert bare.weight_path.name == "weights.gguf"
    assert bare.weight_path.resolve() == path.resolve()
    plain = write_gguf(checkpoint, tmp_path / "gpt2-q4.gguf", "q4_k")
    assert unpack(plain, tmp_path / "bare-q4").weight_path == plain.resolve()
