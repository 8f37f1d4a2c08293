"""Our Q8_0 against llama.cpp Q8_0, in turns (issues 23 and 25).

Q8_0 is what llama.cpp users pick as the near-lossless 8-bit file, so this
is the 8-bit against 8-bit comparison with llama.cpp. Ours is `max serve`
on the Q8_0 file that `gpt2-max convert --to q8_0` writes, with the flags
`./run serve FILE.gguf` would give it; llama.cpp runs in process on the
same file. One stream each, alternating, as the float32 turns
(`__main__.alternate_one_stream`): single figures move 10-30 % between
moments of a run, so the ratio is of the turns' medians. Q8_0 against
CTranslate2 int8 is `ctranslate2_turns`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENCODING = "q8_0"
RESULTS_KEY = "q8_0_rounds"


def served_one_stream_in_turns(
    checkpoint: Path,
    gguf_path: Path,
    served_encoding: str,
    weight_path: Path,
    llama_cpp_python: Path | None,
    *,
    why_not: str = "llama.cpp is not among the peers requested",
    threads: int,
    rounds: int,
    prompt: list[int],
    max_tokens: int,
    log_path: Path,
    llama_cpp_measure: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`rounds` turns of one stream each: ours served on the Q8_0 file
    (`--quantization-encoding served_encoding --weight-path weight_path`,
    as `gguf_unpack` gives them), then llama.cpp in process on the same
    file. The server stays up (idle) through llama.cpp's turns, as in the
    float32 turns. Without llama.cpp (`llama_cpp_python` None, `why_not`
    says why) nothing runs: ours served on Q8_0 alone is already the GGUF
    table's row."""
    from gpt2_max.server import MaxServe

    from . import peer_llama_cpp
    from .load import run_level

    measure = llama_cpp_measure or peer_llama_cpp.measure
    if llama_cpp_python is None:
        return {"skipped": why_not}
    serve_args = [
        "--devices", "cpu",
        "--quantization-encoding", served_encoding,
        "--weight-path", str(weight_path),
    ]  # fmt: skip
    served: list[float] = []
    theirs: list[float] = []
    with MaxServe(checkpoint, serve_args, log_path=log_path) as srv:
        run_level(srv.url, srv.model, [prompt[:16]], 4)  # warm-up
        for turn in range(rounds):
            print(f"[{ENCODING} one stream] round {turn + 1} of {rounds}", flush=True)
            served.append(
                run_level(srv.url, srv.model, [prompt], max_tokens).tokens_per_second
            )
            row = measure(llama_cpp_python, {ENCODING: gguf_path}, threads=threads)
            if "skipped" in row[ENCODING]:
                return {"skipped": row[ENCODING]["skipped"]}
            theirs.append(row[ENCODING]["tokens_per_second"])
    return {
        "served": served,
        "llama.cpp": theirs,
        "served_ratio_of_medians": statistics.median(served)
        / statistics.median(theirs),
    }


def floor_rows(results: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    """The 8-bit floors (Q8_0 / CTranslate2 int8) and the float32 ones are
    `ctranslate2_turns.floor_rows`; `report.floors` still calls this name.
    Remove once it calls `ctranslate2_turns.floor_rows` itself."""
    from . import ctranslate2_turns

    return ctranslate2_turns.floor_rows(results)


def table(results: dict[str, Any]) -> str:
    """The Q8_0 turns as report lines ("" when not run)."""
    rounds = results.get(RESULTS_KEY)
    if not rounds:
        return ""
    lines = []
    if "served" in rounds:
        lines.append(
            f"- Q8_0, one stream, in turns: ours served "
            f"{', '.join(f'{v:.1f}' for v in rounds['served'])} tok/s; llama.cpp "
            f"in process {', '.join(f'{v:.1f}' for v in rounds['llama.cpp'])}; "
            f"ratio of the medians {rounds['served_ratio_of_medians']:.2f}"
        )
    else:
        lines.append(f"- Q8_0 turns: skipped ({rounds['skipped'][:200]})")
    return "\n".join(lines)
