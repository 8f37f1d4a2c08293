"""GPT-2 XL shape (1.56 B parameters), one stream, engine alone: ours and
llama.cpp on the same files, in turns per encoding.

Where bandwidth matters most: 6.2 GB of float32 per token, ~50 s a turn,
long enough for these machines to change memory state between two
figures taken minutes apart, so the sides alternate and each figure is
the median of its turns; ours is bracketed by bandwidth probes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2_max.checkpoints import write_checkpoint

from . import ceilings, engine, peer_llama_cpp
from .turns import ratio_of_medians
from .workload import gguf_serving, write_gguf_once

ENCODINGS = ("f32", "f16", "q4_k")


def checkpoint(out: Path) -> Path:
    path = out / "checkpoints" / "gpt2-xl"
    if not (path / "config.json").exists():
        print("[xl] writing a gpt2-xl-shaped checkpoint", flush=True)
        write_checkpoint(path, "gpt2-xl")
    return path


def measure(
    out: Path,
    llama_cpp_python: Path | None,
    *,
    threads: int,
    rounds: int,
    encodings: tuple[str, ...] = ENCODINGS,
) -> dict[str, Any]:
    """`{encoding: {ours turns, llama.cpp turns, ratio, bandwidth shares}}`."""
    xl = checkpoint(out)
    files = {encoding: write_gguf_once(xl, out, encoding) for encoding in encodings}
    result: dict[str, Any] = {}
    for encoding, path in files.items():
        per_token = ceilings.gguf_matmul_bytes(path)
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for turn in range(rounds):
            print(f"[xl] {encoding}, turn {turn + 1} of {rounds}", flush=True)
            served_encoding, weight_path = gguf_serving(path)
            ours.append(
                engine.decode_tokens_per_second(
                    xl,
                    1,
                    encoding=served_encoding,
                    weight_path=None if encoding == "f32" else weight_path,
                    steps=24,
                    warmup=3,
                    probe_threads=threads,
                )
            )
            if llama_cpp_python is not None:
                row = peer_llama_cpp.measure(
                    llama_cpp_python, {encoding: path}, threads=threads
                )[encoding]
                theirs.append(row)
        ours_tps = [t["tokens_per_second"] for t in ours]
        row: dict[str, Any] = {
            "bytes_per_token": per_token,
            "ours_tokens_per_second": ours_tps,
            "bandwidth_share": ceilings.shares_summary(
                [
                    ceilings.share(
                        t["tokens_per_second"], per_token, t["bandwidth"]["gbs"]
                    )
                    for t in ours
                ]
            ),
            "ours": ours,
        }
        skipped = next((t["skipped"] for t in theirs if "skipped" in t), None)
        if llama_cpp_python is None or skipped:
            row["llama.cpp"] = {"skipped": skipped or "llama.cpp not measured"}
        else:
            their_tps = [t["tokens_per_second"] for t in theirs]
            row |= {
                "llama.cpp": theirs,
                "llama_cpp_tokens_per_second": their_tps,
                "ratio_of_medians": ratio_of_medians(ours_tps, their_tps),
            }
        result[encoding] = row
    return result
