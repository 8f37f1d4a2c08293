"""Tokenizers from `tokenizer.json` and from GGUF metadata; `gpt2-max unpack`.

No graph is compiled here; `tests/e2e/test_gguf_bare.py` runs the results.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from transformers import GPT2Tokenizer

from gpt2_lmhead_model.weight_adapters import CheckpointMismatch
from gpt2_max.checkpoints import TOKENIZER_DIR
from gpt2_max.cli import main
from gpt2_max.gguf_export import write_gguf
from gpt2_max.gguf_unpack import unpack

from ..conftest import TEXT


def tokenizer_json_only(source, out):
    """`source` as transformers 5's save_pretrained leaves a checkpoint:
    tokenizer.json and tokenizer_config.json, no vocab.json / merges.txt."""
    shutil.copytree(source, out)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (out / name).unlink()
    n_positions = json.loads((out / "config.json").read_text())["n_positions"]
    GPT2Tokenizer.from_pretrained(
        TOKENIZER_DIR, model_max_length=n_positions
    ).save_pretrained(out)
    assert not (out / "vocab.json").exists()
    assert (out / "tokenizer.json").is_file()
    return out


def _fields(path):
    reader = gguf.GGUFReader(str(path))
    return {
        k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")
    }


def test_tokenizer_json_checkpoint_converts_like_vocab_json(checkpoints, tmp_path):
    source = checkpoints["variant"]
    alone = tokenizer_json_only(source, tmp_path / "tokenizer-json")
    a = write_gguf(source, tmp_path / "a.gguf", "f32")
    b = write_gguf(alone, tmp_path / "b.gguf", "f32")
    assert _fields(a) == _fields(b)
    # Identical tensors too: only the tokenizer files differ.
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    for x, y in zip(ra.tensors, rb.tensors, strict=True):
        assert x.name == y.name
        assert np.array_equal(x.data, y.data)


def test_no_tokenizer_is_named(checkpoints, tmp_path, capsys):
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoints["variant"], bare)
    for name in ("vocab.json", "merges.txt"):
        (bare / name).unlink()
    assert main(["convert", str(bare), str(tmp_path / "x.gguf"), "--to", "f32"]) == 2
    err = capsys.readouterr().err
    assert "expected vocab.json and merges.txt, or tokenizer.json" in err


def test_unpacked_tokenizer_encodes_as_the_original(checkpoints, tmp_path, tokenizer):
    path = write_gguf(checkpoints["variant"], tmp_path / "v.gguf", "f32")
    unpacked = unpack(path, tmp_path / "unpacked")
    config = json.loads((unpacked.model_dir / "config.json").read_text())
    source = json.loads((checkpoints["variant"] / "config.json").read_text())
    for key in (
        "n_positions", "n_embd", "n_head", "n_layer", "n_inner", "vocab_size",
        "layer_norm_epsilon", "activation_function",
        "scale_attn_by_inverse_layer_idx", "tie_word_embeddings",
        "bos_token_id", "eos_token_id",
    ):  # fmt: skip
        assert config[key] == source[key], key
    assert unpacked.encoding == "float32"
    assert unpacked.weight_path == path.resolve()

    ours = GPT2Tokenizer.from_pretrained(unpacked.model_dir)
    text = TEXT + " <|endoftext|> Ünïcödé 🙂 tabs\tand  spaces"
    assert ours(text).input_ids == tokenizer(text).input_ids
    assert ours.eos_token == ours.bos_token == "<|endoftext|>"
    # The converter's [PAD{id}] placeholders (vocab 50304 > 50257) are not
    # tokens of the unpacked tokenizer, as they were not of the original.
    assert len(ours) == len(tokenizer) == 50257
    assert ours.model_max_length == 256


def test_unpack_names_the_encoding_of_a_quantized_file(tmp_path):
    from gpt2_max.checkpoints import DISTILGPT2_CONFIG, write_checkpoint

    small = {**DISTILGPT2_CONFIG, "n_embd": 256, "n_head": 4, "n_layer": 1,
             "n_inner": 512, "n_positions": 64, "n_ctx": 64}  # fmt: skip
    checkpoint = write_checkpoint(tmp_path / "small", small, seed=3)
    # MAX 26.7 has no q8_0 encoding: a Q8_0 file serves as float32, its
    # matrices routed to `panel_q8_linear` per tensor.
    cases = [("q4_k_m", "q4_k"), ("q6_k", "q6_k"), ("q8_0", "float32")]
    for encoding, expected in cases:
        path = write_gguf(checkpoint, tmp_path / f"{encoding}.gguf", encoding)
        assert unpack(path, tmp_path / encoding).encoding == expected


def _rewrite(src, dst, *, metadata=None):
    """A copy of GGUF `src` with some scalar metadata replaced."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), "gpt2")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (metadata or {}).get(key, field.contents())
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, kind)
    for t in reader.tensors:
        rows_cols = tuple(int(d) for d in reversed(t.shape.tolist()))
        writer.add_tensor(
            t.name,
            np.asarray(t.data),
            raw_shape=gguf.quant_shape_to_byte_shape(list(rows_cols), t.tensor_type)
            if t.tensor_type != gguf.GGMLQuantizationType.F32
            else rows_cols,
            raw_dtype=t.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("gpt2.embedding_length", 99, "attn_qkv"),
        ("gpt2.block_count", 4, "missing tensor blk.3"),
        ("gpt2.feed_forward_length", 192, "ffn_up"),
        ("gpt2.context_length", 512, "position_embd"),
    ],
)
def test_unpack_refuses_metadata_contradicting_tensors(
    checkpoints, tmp_path, key, value, named
):
    path = write_gguf(checkpoints["variant"], tmp_path / "v.gguf", "f32")
    bad = _rewrite(path, tmp_path / "bad.gguf", metadata={key: value})
    with pytest.raises(CheckpointMismatch, match=named):
        unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()
