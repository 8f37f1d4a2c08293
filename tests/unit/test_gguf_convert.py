"""`gpt2-max convert`: the K-quant packers and the GGUF converter.

Pure numpy / gguf (transformers only writes the checkpoints); no graph is
compiled. Quantized bytes are read back with `gguf.quants.dequantize`,
whose block decoders mirror ggml's `dequantize_row_*`, so a packing that
ggml (or MAX's ggml kernels) would misread fails the error bounds here.
"""

from __future__ import annotations

import json
import math
import shutil

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file

from gpt2_max import gguf_export
from gpt2_max.checkpoints import (
    DISTILGPT2_CONFIG,
    TOKENIZER_DIR,
    VARIANT_CONFIG,
    write_checkpoint,
)
from gpt2_max.cli import build_parser, main
from gpt2_max.gguf_export import write_gguf
from gpt2_max.gguf_quants import quantize

from ..llama_cpp_gpt2 import gguf_name, is_conv1d_weight, rows_cols

# Relative L2 round-trip error bounds. For values of std s quantized on a
# uniform grid of step D the error is ~D/sqrt(12) per value, so the relative
# error is ~(range / steps) / (sqrt(12) s), with range the block's span:
#   Q4_0: 32-value blocks, |max| (~2.2 s) maps to 8 steps     -> ~0.079
#   Q4_K: 32-value sub-blocks, min..max (~4.1 s) in 15 steps  -> ~0.079
#         (its scale/min search brings it lower)
#   Q6_K: 16-value sub-blocks, |max| (~1.95 s) maps to 32 steps -> ~0.018
#   Q8_0: 32-value blocks, |max| (~2.2 s) maps to 127 steps   -> ~0.005
# Measured on `_weights()` below (normal rows / all rows; the outlier rows'
# blocks span 10x more): Q4_0 0.086 / 0.103, Q4_K 0.071 / 0.077,
# Q6_K 0.018 / 0.021, Q8_0 0.0054 / 0.0066. Packing bugs tried against these
# bounds (swapped nibbles; the 6-bit scales' high bits in the wrong bytes;
# scale and min nibbles swapped; Q6_K's ql quarters or qh pairs out of
# order; d and scales swapped) gave 0.40 to 1.7, or NaN.
BOUNDS = {T.Q4_0: 0.13, T.Q4_K: 0.10, T.Q6_K: 0.03, T.Q8_0: 0.01}


def _weights(rows: int = 64, cols: int = 768, seed: int = 0) -> np.ndarray:
    """GPT-2-like weights (std 0.02); every eighth row has a few 10x outliers."""
    x = np.random.default_rng(seed).normal(0, 0.02, (rows, cols)).astype(np.float32)
    x[::8, ::97] *= 10
    return x


def _rel_err(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_K, T.Q6_K, T.Q8_0])
def test_quantize_round_trip(qtype):
    x = _weights()
    raw = quantize(x, qtype)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert raw.dtype == np.uint8
    assert raw.shape == (64, 768 // block_size * type_size)
    back = gguf.quants.dequantize(raw, qtype)
    assert back.shape == x.shape
    assert _rel_err(back, x) < BOUNDS[qtype]
    # Every row on its own, outlier rows included: no block is misread.
    worst = max(_rel_err(back[i], x[i]) for i in range(len(x)))
    assert worst < 1.5 * BOUNDS[qtype]


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K])
def test_k_quants_edge_blocks(qtype):
    x = _weights(rows=6, cols=512, seed=1)
    x[0] = 0  # all zero: must come back exactly zero
    x[1] = -0.03  # constant negative
    x[2] = np.abs(x[2]) + 0.1  # all positive, away from zero
    x[3, :256] = 0  # one zero block next to a normal one
    x[4, 100] = 3.0  # a single huge outlier
    back = gguf.quants.dequantize(quantize(x, qtype), qtype)
    assert np.array_equal(back[0], np.zeros(512, np.float32))
    assert np.array_equal(back[3, :256], np.zeros(256, np.float32))
    np.testing.assert_allclose(back[1], x[1], rtol=2e-3)
    assert _rel_err(back[2], x[2]) < BOUNDS[qtype]
    assert _rel_err(back[3, 256:], x[3, 256:]) < BOUNDS[qtype]
    assert abs(back[4, 100] - 3.0) < 0.01


def _q8_0_reference(x: np.ndarray) -> bytes:
    """ggml's `quantize_row_q8_0_ref`, value by value: per 32 values an fp16
    `d = amax / 127` and int8 `roundf(x / d)` (float32 products, halves
    rounded away from zero, as C's roundf)."""
    out = bytearray()
    for block in x.astype(np.float32).reshape(-1, 32):
        amax = np.float32(0)
        for v in block:
            amax = max(amax, np.abs(v))
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        out += np.float16(d).tobytes()
        for v in block:
            q = float(v * inv)
            out += np.int8(math.copysign(math.floor(abs(q) + 0.5), q)).tobytes()
    return bytes(out)


def test_q8_0_is_llama_cpps_bytes():
    """Byte for byte what ggml's reference quantizer and `gguf.quants` write,
    halves included: 2.5 is 3, not numpy's round-half-even 2."""
    x = _weights(rows=4, cols=128, seed=2)
    x[0, :32] = 0  # all zero: d = 0, codes 0
    x[1, :32] = np.linspace(-127, 126.5, 32, dtype=np.float32)  # d = 1
    x[1, 1:8] = [2.5, -2.5, 0.5, -0.5, 1.5, -126.5, 126.5]
    x[2, 32:64] = -np.abs(x[2, 32:64])  # the largest |x| negative
    raw = quantize(x, T.Q8_0)
    assert raw.tobytes() == _q8_0_reference(x)
    assert raw.tobytes() == gguf.quants.quantize(x, T.Q8_0).tobytes()
    codes = raw[1, 2:34].view(np.int8)
    assert list(codes[:8]) == [-127, 3, -3, 1, -1, 2, -127, 127]


def test_quantize_passthrough_and_errors():
    x = _weights(rows=2, cols=64)
    assert quantize(x, T.F32) is x
    assert quantize(x, T.F16).dtype == np.float16
    with pytest.raises(ValueError, match=r"\[2, 64\].*Q4_K.*256"):
        quantize(x, T.Q4_K)
    with pytest.raises(ValueError, match=r"\[3, 40\].*Q4_0"):
        quantize(np.zeros((3, 40), np.float32), T.Q4_0)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.full((1, 256), np.nan, np.float32), T.Q6_K)


# ------------------------------------------------------------ the converter

TINY = {
    **DISTILGPT2_CONFIG,
    "n_embd": 256,
    "n_head": 4,
    "n_layer": 2,
    "n_positions": 64,
    "n_ctx": 64,
    "n_inner": 512,
}
MATRICES = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
# Pinned here, not read from the converter, so an encoding it drops fails.
ENCODINGS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m")
FILE_TYPES = {
    "f32": 0,
    "f16": 1,
    "bf16": 32,
    "q8_0": 7,
    "q4_0": 2,
    "q4_k": 14,
    "q6_k": 18,
    "q4_k_m": 15,
}


def test_converter_offers_every_encoding():
    assert tuple(gguf_export.ENCODINGS) == ENCODINGS
    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    to = next(a for a in convert._actions if a.dest == "to")
    assert tuple(to.choices) == ENCODINGS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny"), TINY, seed=0)


@pytest.fixture(scope="module")
def readers(tiny, tmp_path_factory):
    """Each encoding converted and opened once (opening parses the 100k
    vocabulary and merge strings, which takes GGUFReader a second or two)."""
    out = tmp_path_factory.mktemp("gguf")
    return {
        e: gguf.GGUFReader(write_gguf(tiny, out / f"{e}.gguf", e)) for e in ENCODINGS
    }


def _hf_tensors(checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint read by safetensors itself, as GGUF names and layout."""
    tensors = load_file(str(checkpoint / "model.safetensors"))
    out = {}
    for name, array in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if is_conv1d_weight(name):
            array = array.T
        out[name] = array
    return out


def _expected_types(encoding: str, n_layer: int) -> dict[str, T]:
    matrix = {
        "f32": T.F32,
        "f16": T.F16,
        "bf16": T.BF16,
        "q8_0": T.Q8_0,
        "q4_0": T.Q4_0,
        "q4_k": T.Q4_K,
        "q6_k": T.Q6_K,
        "q4_k_m": T.Q4_K,
    }[encoding]
    types = {
        "token_embd.weight": matrix,
        "position_embd.weight": T.F32,
        "output_norm.weight": T.F32,
        "output_norm.bias": T.F32,
        "output.weight": matrix,
    }
    for i in range(n_layer):
        for part in ("attn_norm", "ffn_norm"):
            types[f"blk.{i}.{part}.weight"] = T.F32
            types[f"blk.{i}.{part}.bias"] = T.F32
        for part in MATRICES:
            types[f"blk.{i}.{part}.weight"] = matrix
            types[f"blk.{i}.{part}.bias"] = T.F32
    if encoding == "q4_k_m":
        # llama.cpp's use_more_bits(layer, 2) picks layer 1 only.
        types["output.weight"] = types["blk.1.ffn_down.weight"] = T.Q6_K
    return types


def _metadata(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tensors_names_shapes_types(readers, encoding):
    tensors = {t.name: t for t in readers[encoding].tensors}
    e, ff, v = 256, 512, 50257
    shapes = {
        "token_embd.weight": (v, e),
        "position_embd.weight": (64, e),
        "output_norm.weight": (e,),
        "output_norm.bias": (e,),
        "output.weight": (v, e),
    }
    for i in range(2):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (e,),
            f"blk.{i}.attn_norm.bias": (e,),
            f"blk.{i}.attn_qkv.weight": (3 * e, e),
            f"blk.{i}.attn_qkv.bias": (3 * e,),
            f"blk.{i}.attn_output.weight": (e, e),
            f"blk.{i}.attn_output.bias": (e,),
            f"blk.{i}.ffn_norm.weight": (e,),
            f"blk.{i}.ffn_norm.bias": (e,),
            f"blk.{i}.ffn_up.weight": (ff, e),
            f"blk.{i}.ffn_up.bias": (ff,),
            f"blk.{i}.ffn_down.weight": (e, ff),
            f"blk.{i}.ffn_down.bias": (e,),
        }
    assert {n: rows_cols(t) for n, t in tensors.items()} == shapes
    assert {n: t.tensor_type for n, t in tensors.items()} == _expected_types(
        encoding, 2
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_metadata(readers, encoding):
    md = _metadata(readers[encoding])
    assert md["general.architecture"] == "gpt2"
    assert md["general.file_type"] == FILE_TYPES[encoding]
    assert md["general.name"] == "tiny0"
    assert md["gpt2.context_length"] == 64
    assert md["gpt2.embedding_length"] == 256
    assert md["gpt2.feed_forward_length"] == 512
    assert md["gpt2.block_count"] == 2
    assert md["gpt2.attention.head_count"] == 4
    assert md["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert md["gpt2.activation_function"] == "gelu_new"
    assert md["gpt2.scale_attn_weights"] is True
    assert md["gpt2.scale_attn_by_inverse_layer_idx"] is False

    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == "gpt-2"
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    tokens = md["tokenizer.ggml.tokens"]
    assert tokens == sorted(vocab, key=vocab.__getitem__)
    assert len(tokens) == 50257
    assert tokens[50256] == "<|endoftext|>"
    types = md["tokenizer.ggml.token_type"]
    assert types[50256] == gguf.TokenType.CONTROL
    assert set(types[:50256]) == {gguf.TokenType.NORMAL}
    merges = md["tokenizer.ggml.merges"]
    assert len(merges) == 50000
    assert merges[0] == "Ġ t"
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id"):
        assert md[f"tokenizer.ggml.{key}"] == 50256


def _not_bit_identical(reader, checkpoint) -> list[str]:
    """The f32 file's tensors that are not exactly the checkpoint's, looked
    up by llama.cpp's names; raises if the name sets differ."""
    stored = {t.name: np.asarray(t.data).reshape(rows_cols(t)) for t in reader.tensors}
    expected = {gguf_name(n): a for n, a in _hf_tensors(checkpoint).items()}
    expected["output.weight"] = expected["token_embd.weight"]  # tied
    assert stored.keys() == expected.keys()
    return [
        name
        for name, array in expected.items()
        if stored[name].dtype != np.float32
        or not np.array_equal(stored[name].view(np.uint32), array.view(np.uint32))
    ]


def test_f32_is_bit_identical(tiny, readers):
    assert _not_bit_identical(readers["f32"], tiny) == []


def test_swapped_norms_in_the_writer_are_caught(tiny, tmp_path, monkeypatch):
    """attn_norm (ln_1) and ffn_norm (ln_2) have the same shape: only their
    values tell them apart, so the fixture's norms must differ."""
    real = gguf_export.gguf_name
    swap = {"attn_norm": "ffn_norm", "ffn_norm": "attn_norm"}

    def swapped(name: str) -> str:
        parts = real(name).split(".")
        return ".".join(swap.get(p, p) for p in parts)

    monkeypatch.setattr(gguf_export, "gguf_name", swapped)
    reader = gguf.GGUFReader(write_gguf(tiny, tmp_path / "swapped.gguf", "f32"))
    assert sorted(_not_bit_identical(reader, tiny)) == sorted(
        f"blk.{i}.{norm}.{kind}"
        for i in range(2)
        for norm in ("attn_norm", "ffn_norm")
        for kind in ("weight", "bias")
    )


@pytest.mark.parametrize("encoding", ["q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"])
def test_quantized_tensors_are_close(tiny, readers, encoding):
    expected = {gguf_name(n): a for n, a in _hf_tensors(tiny).items()}
    expected["output.weight"] = expected["token_embd.weight"]
    for tensor in readers[encoding].tensors:
        back = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        back = back.reshape(rows_cols(tensor))
        want = expected[tensor.name]
        if tensor.tensor_type == T.F32:
            assert np.array_equal(back, want), tensor.name
        else:
            err = _rel_err(back, want)
            assert err < BOUNDS[tensor.tensor_type], (tensor.name, err)


def test_q8_0_file_is_what_llama_cpps_converter_writes(tiny, readers):
    """`convert_hf_to_gguf.py --outtype q8_0`: every matrix (the embedding
    and the tied head included) in `gguf.quants`' Q8_0 bytes of the
    checkpoint's values; vectors and `position_embd` exact float32."""
    expected = {gguf_name(n): a for n, a in _hf_tensors(tiny).items()}
    expected["output.weight"] = expected["token_embd.weight"]
    matrices = 0
    for tensor in readers["q8_0"].tensors:
        want = expected[tensor.name]
        if tensor.tensor_type == T.Q8_0:
            matrices += 1
            llama = gguf.quants.quantize(np.ascontiguousarray(want), T.Q8_0)
            assert np.asarray(tensor.data).tobytes() == llama.tobytes(), tensor.name
        else:
            assert tensor.tensor_type == T.F32, tensor.name
            assert want.ndim == 1 or tensor.name == "position_embd.weight"
            assert np.array_equal(np.asarray(tensor.data).reshape(want.shape), want)
    assert matrices == 2 + 4 * 2  # token_embd, output, four per block


def _bf16_rounded(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (nearest, ties to even), as float32."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("encoding", ["f16", "bf16"])
def test_half_float_tensors_are_the_rounded_checkpoint(tiny, readers, encoding):
    """Matrices hold the checkpoint's values rounded to the half type (as
    `convert_hf_to_gguf.py --outtype` writes them); vectors stay exact."""
    expected = {gguf_name(n): a for n, a in _hf_tensors(tiny).items()}
    expected["output.weight"] = expected["token_embd.weight"]
    rounded = {
        "f16": lambda a: a.astype(np.float16).astype(np.float32),
        "bf16": _bf16_rounded,
    }[encoding]
    for tensor in readers[encoding].tensors:
        back = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        back = back.reshape(rows_cols(tensor))
        want = expected[tensor.name]
        if tensor.tensor_type != T.F32:
            want = rounded(want)
            assert not np.array_equal(want, expected[tensor.name]), tensor.name
        assert np.array_equal(back, want), tensor.name


def test_untied_prefixed_checkpoint_with_odd_rows(tmp_path, capsys):
    """VARIANT_CONFIG (untied head, gelu, inverse-layer-idx scaling, a vocab
    padded past the tokenizer), saved `transformers`-style, with an n_inner
    whose rows fit neither K-quant nor Q8_0 blocks."""
    config = {**VARIANT_CONFIG, "n_inner": 200}
    ckpt = write_checkpoint(tmp_path / "variant", config, seed=1, layout="transformers")
    out = tmp_path / "variant.gguf"
    assert main(["convert", str(ckpt), str(out), "--to", "q4_k"]) == 0
    assert capsys.readouterr().out.strip() == str(out)

    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    # Rows of 96 (n_embd) are not 256-blocks: Q8_0. Rows of 200: F32.
    assert tensors["token_embd.weight"].tensor_type == T.Q8_0
    assert tensors["blk.0.ffn_up.weight"].tensor_type == T.Q8_0
    assert tensors["blk.0.ffn_down.weight"].tensor_type == T.F32
    assert rows_cols(tensors["blk.0.ffn_down.weight"]) == (96, 200)

    hf = load_file(str(ckpt / "model.safetensors"))
    head = gguf.quants.dequantize(tensors["output.weight"].data, T.Q8_0)
    head = head.reshape(rows_cols(tensors["output.weight"]))
    assert _rel_err(head, hf["lm_head.weight"]) < BOUNDS[T.Q8_0]
    assert _rel_err(head, hf["transformer.wte.weight"]) > 1
    down = np.asarray(tensors["blk.2.ffn_down.weight"].data).reshape(96, 200)
    assert np.array_equal(down, hf["transformer.h.2.mlp.c_proj.weight"].T)

    md = _metadata(reader)
    assert md["gpt2.activation_function"] == "gelu"
    assert md["gpt2.scale_attn_by_inverse_layer_idx"] is True
    assert md["gpt2.feed_forward_length"] == 200
    assert md["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert len(tokens) == 50304
    assert tokens[50257] == "[PAD50257]"
    assert tokens[-1] == "[PAD50303]"
    assert set(types[50257:]) == {gguf.TokenType.USER_DEFINED}

    # A config.json the tensors contradict is refused, naming the tensor.
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "config.json").write_text(json.dumps({**config, "n_inner": 256}))
    with pytest.raises(
        ValueError, match=r"h\.0\.mlp\.c_fc\.weight has shape \[96, 200\]"
    ):
        write_gguf(bad, tmp_path / "bad.gguf", "f32")


def test_convert_refuses_bad_input_with_one_line(tmp_path, capsys):
    from gpt2_max.cli import main

    assert (
        main(
            [
                "convert",
                str(tmp_path / "nowhere"),
                str(tmp_path / "x.gguf"),
                "--to",
                "q4_k",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error: ")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    assert main(["convert", str(llama), str(tmp_path / "y.gguf"), "--to", "f32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "LlamaForCausalLM" in err
    assert not (tmp_path / "y.gguf").exists()
