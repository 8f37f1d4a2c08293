"""What every measurement of the benchmark runs: the prompts, the flags
`max serve` is given, and the GGUF files, so that ours and each peer get
the same work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from gpt2_max.gguf_export import write_gguf
from gpt2_max.gguf_unpack import main_encoding, weights_link

F32_SERVE_ARGS = ["--devices", "cpu", "--quantization-encoding", "float32"]
"""`max serve` flags of every float32 measurement, ours and MAX Llama's."""

TEXT = (
    "The harbour was quiet in the early morning, and the fishing boats rocked "
    "gently against the pier while gulls argued over scraps. An old man sat on "
    "an upturned crate, mending a net with quick, practised fingers. "
)


def prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """`count` distinct prompts of exactly `length` tokens (no shared prefix)."""
    ids = tokenizer(TEXT * (2 + (count + length) // 40)).input_ids
    return [ids[i + 1 : i + 1 + length] for i in range(count)]


def write_gguf_once(checkpoint: Path, out: Path, encoding: str) -> Path:
    # Absolute: MAX resolves a relative --weight-path inside --model-path.
    path = (out / "checkpoints" / f"{checkpoint.name}-{encoding}.gguf").resolve()
    if not path.exists():
        print(f"[gguf] writing {path.name}", flush=True)
        write_gguf(checkpoint, path, encoding)
    return path


def gguf_serving(path: Path) -> tuple[str, Path]:
    """The `--quantization-encoding` and `--weight-path` MAX is given for a
    GGUF file, as `./run serve FILE.gguf` gives them (`gguf_unpack`)."""
    encoding = main_encoding(gguf.GGUFReader(path))
    links = path.parent / f"{path.stem}-link"
    links.mkdir(exist_ok=True)
    return encoding, weights_link(path, links, encoding)


def gguf_serve_args(path: Path) -> list[str]:
    """The `max serve` flags of ours on a GGUF file, on CPU."""
    encoding, weight_path = gguf_serving(path)
    return [
        "--devices", "cpu",
        "--quantization-encoding", encoding,
        "--weight-path", str(weight_path),
    ]  # fmt: skip
