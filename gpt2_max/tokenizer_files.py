"""A GPT-2 byte-level BPE tokenizer, whichever files hold it.

Checkpoints carry it as `vocab.json` + `merges.txt` (the hub's GPT-2
repositories, older `save_pretrained`) or as one `tokenizer.json` (what
transformers 5's `save_pretrained` writes); a GGUF file carries it in its
metadata (`tokenizer.ggml.*`). All three hold the same two things: the
token -> id table and the ranked merges.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

EOT = "<|endoftext|>"
# What llama.cpp's converter (and `gpt2-max convert`) names ids the
# tokenizer lacks below the model's vocab_size.
_PLACEHOLDER = re.compile(r"\[PAD(\d+)\]")


@dataclass
class BPETokenizer:
    vocab: dict[str, int]  # token -> id
    merges: list[str]  # "left right", highest priority first
    special: set[str] = field(default_factory=set)  # control tokens


def read_tokenizer(checkpoint_dir: str | Path) -> BPETokenizer:
    """The checkpoint's tokenizer: `vocab.json` + `merges.txt` if both are
    there, else `tokenizer.json`; neither is an error naming what is
    missing."""
    directory = Path(checkpoint_dir)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return _from_vocab_and_merges(directory)
    if (directory / "tokenizer.json").is_file():
        return _from_tokenizer_json(directory / "tokenizer.json")
    raise FileNotFoundError(
        f"no tokenizer in {directory}: expected vocab.json and merges.txt, "
        "or tokenizer.json"
    )


def _from_vocab_and_merges(directory: Path) -> BPETokenizer:
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    # As gguf.SpecialVocab reads merges.txt: a leading '#version' line is
    # skipped, every other non-empty line is two space-separated tokens.
    merges = []
    text = (directory / "merges.txt").read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n"), start=1):
        parts = line.split()
        if not parts or (number == 1 and line.startswith("#")):
            continue
        if len(parts) != 2:
            raise ValueError(f"merges.txt line {number} is not two tokens: {line!r}")
        merges.append(f"{parts[0]} {parts[1]}")
    return BPETokenizer(vocab, merges, {EOT} & set(vocab))


def _from_tokenizer_json(path: Path) -> BPETokenizer:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"{path.name} holds a {model.get('type')!r} model; GPT-2 uses BPE"
        )
    vocab = dict(model["vocab"])
    merges = []
    for number, merge in enumerate(model.get("merges", []), start=1):
        # tokenizers writes ["left", "right"] pairs today, "left right" before.
        parts = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(parts) != 2:
            raise ValueError(f"{path.name} merge {number} is not two tokens: {merge!r}")
        merges.append(f"{parts[0]} {parts[1]}")
    special = set()
    for added in data.get("added_tokens", []):
        token, i = added["content"], int(added["id"])
        if vocab.setdefault(token, i) != i:
            raise ValueError(
                f"{path.name}: added token {token!r} has id {i}, the vocabulary "
                f"{vocab[token]}"
            )
        if added.get("special"):
            special.add(token)
    return BPETokenizer(vocab, merges, special)


def tokens_by_id(
    tokenizer: BPETokenizer, vocab_size: int
) -> tuple[list[str], list[gguf.TokenType]]:
    """Tokens in id order and their GGUF types, as llama.cpp's converter
    lays out a GPT-2 vocabulary: ids the tokenizer lacks up to `vocab_size`
    become `[PAD{id}]` user-defined tokens."""
    by_id = {i: token for token, i in tokenizer.vocab.items()}
    if len(by_id) != len(tokenizer.vocab) or max(by_id) >= vocab_size:
        raise ValueError(
            f"the tokenizer holds ids up to {max(by_id)} (some repeated) or "
            f"beyond config.json's vocab_size {vocab_size}"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            special = token in tokenizer.special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.NORMAL)
    return tokens, types


def from_gguf_metadata(
    tokens: Sequence[str], types: Sequence[int] | None, merges: Sequence[str]
) -> BPETokenizer:
    """The tokenizer a GGUF file's `tokenizer.ggml.tokens` / `token_type` /
    `merges` describe, without the `[PAD{id}]` placeholders (ids no
    tokenizer file had)."""
    if types is not None and len(types) != len(tokens):
        raise ValueError(
            f"GGUF tokenizer.ggml.token_type has {len(types)} entries for "
            f"{len(tokens)} tokens"
        )
    vocab: dict[str, int] = {}
    special = set()
    for i, token in enumerate(tokens):
        kind = gguf.TokenType(types[i]) if types is not None else None
        placeholder = _PLACEHOLDER.fullmatch(token)
        if (
            kind == gguf.TokenType.USER_DEFINED
            and placeholder
            and int(placeholder.group(1)) == i
        ):
            continue
        if token in vocab:
            raise ValueError(
                f"GGUF token {token!r} appears at ids {vocab[token]} and {i}"
            )
        vocab[token] = i
        if kind == gguf.TokenType.CONTROL:
            special.add(token)
    for number, merge in enumerate(merges, start=1):
        if len(merge.split(" ")) != 2:
            raise ValueError(f"GGUF merge {number} is not two tokens: {merge!r}")
    return BPETokenizer(vocab, list(merges), special)


def write_vocab_and_merges(
    tokenizer: BPETokenizer, out_dir: str | Path, config: Mapping[str, Any]
) -> None:
    """`vocab.json`, `merges.txt` and `tokenizer_config.json` (`config`),
    the files transformers' GPT2Tokenizer and MAX read."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(
        json.dumps(tokenizer.vocab, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in tokenizer.merges),
        encoding="utf-8",
    )
    (out / "tokenizer_config.json").write_text(json.dumps(dict(config)) + "\n")
