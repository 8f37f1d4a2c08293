"""Ours served against CTranslate2 in process, in turns (issue 25).

Floors: ours served float32 >= 1.0x CTranslate2 float32, and ours served
Q8_0 >= 1.0x CTranslate2 int8 (8-bit against 8-bit), at one stream and
at many. Single figures move 10-30 % between moments of a run, so each
turn measures ours then CTranslate2 at every stream count, and the ratio
is of the turns' medians. The server stays up through
CTranslate2's turns (one child process per turn), paused (SIGSTOP):
an idle MAX server polls about a tenth of a core.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .turns import ratio_of_medians

RESULTS_KEY = "ctranslate2"
SERVED_AS = {"float32": "float32", "int8": "Q8_0"}
"""CTranslate2's compute type -> what ours serves against it."""


def served_in_turns(
    checkpoint: Path,
    serve_args: list[str],
    ct2_python: Path,
    ct2_model_dir: Path,
    compute_type: str,
    *,
    prompts: list[list[int]],
    max_tokens: int,
    threads: int,
    rounds: int,
    streams: tuple[int, ...] = (1, 32),
    log_path: Path,
    ct2_measure: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`rounds` turns: ours served (`max serve` with `serve_args`) at each
    of `streams`, then CTranslate2 (`compute_type`) at the same counts on
    the same prompts. `{ours, ctranslate2, compute_type, ratio_of_medians}`
    keyed by `str(streams)`, or `{skipped}` when a CTranslate2 turn fails."""
    from gpt2_max.server import MaxServe

    from . import load, peer_ctranslate2

    if len(prompts) < max(streams):
        raise ValueError(
            f"{max(streams)} streams need as many prompts, got {len(prompts)}"
        )
    measure = ct2_measure or peer_ctranslate2.measure
    keys = [str(n) for n in streams]
    ours: dict[str, list[float]] = {k: [] for k in keys}
    theirs: dict[str, list[float]] = {k: [] for k in keys}
    with MaxServe(checkpoint, serve_args, log_path=log_path) as srv:
        load.run_level(srv.url, srv.model, [p[:16] for p in prompts[:2]], 4)  # warm-up
        for turn in range(rounds):
            print(
                f"[ctranslate2 {compute_type}] round {turn + 1} of {rounds}", flush=True
            )
            for n in streams:
                level = load.run_level(srv.url, srv.model, prompts[:n], max_tokens)
                ours[str(n)].append(level.tokens_per_second)
            srv.pause()  # an idle server polls; CTranslate2 gets the cores
            try:
                row = measure(
                    ct2_python,
                    ct2_model_dir,
                    compute_type,
                    prompts,
                    max_tokens,
                    threads,
                    batches=tuple(streams),
                )
            finally:
                srv.resume()
            if "skipped" in row:
                return {"compute_type": compute_type, "skipped": row["skipped"]}
            for k in keys:
                theirs[k].append(row[k]["tokens_per_second"])
    return {
        "compute_type": compute_type,
        "ours": ours,
        "ctranslate2": theirs,
        "ratio_of_medians": {k: ratio_of_medians(ours[k], theirs[k]) for k in keys},
    }


def measure_peer(
    checkpoint: Path,
    q8_0_gguf: Path | None,
    *,
    prompts: list[list[int]],
    max_tokens: int,
    threads: int,
    rounds: int,
    streams: tuple[int, ...],
    out: Path,
    peers_dir: Path,
) -> dict[str, Any]:
    """All of `results["ctranslate2"]`: installs the peer, converts
    `checkpoint` (float32, int8), checks float32 greedy against
    transformers, then float32 turns against ours served float32 and int8
    turns against ours served on `q8_0_gguf` (None: not written this run).
    What cannot run is `{skipped}` with the reason."""
    from . import peer_ctranslate2, peer_venv
    from .workload import F32_SERVE_ARGS, gguf_serve_args

    try:
        python = peer_ctranslate2.install(peers_dir)
        dirs = {
            kind: peer_ctranslate2.convert(
                python, checkpoint, out / "checkpoints", kind
            )
            for kind in peer_ctranslate2.COMPUTE_TYPES
        }
    except (peer_venv.PeerUnavailable, peer_ctranslate2.ChildFailed) as e:
        print(f"[ctranslate2] skipped: {e}", flush=True)
        return {kind: {"skipped": str(e)} for kind in SERVED_AS}
    result: dict[str, Any] = {
        "check": peer_ctranslate2.check_greedy(
            python, checkpoint, dirs["float32"], prompts[:3], 16, threads
        )
    }
    serve_args = {
        "float32": F32_SERVE_ARGS,
        "int8": gguf_serve_args(q8_0_gguf) if q8_0_gguf else None,
    }
    for kind, args in serve_args.items():
        if args is None:
            result[kind] = {"skipped": "no Q8_0 file: q8_0 not among the encodings"}
            continue
        result[kind] = served_in_turns(
            checkpoint,
            args,
            python,
            dirs[kind],
            kind,
            prompts=prompts,
            max_tokens=max_tokens,
            threads=threads,
            rounds=rounds,
            streams=streams,
            log_path=out / f"ours-ctranslate2-{kind}-turns.log",
        )
    return result


def _streams(n: int) -> str:
    return f"{n} stream{'s' if n > 1 else ''}"


def floor_rows(results: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    """Issue 25's CTranslate2 floors, `(name, ratio of medians or None,
    required)`, at one stream and at the run's most streams."""
    many = max(results["workload"]["levels"])
    ct2 = results.get(RESULTS_KEY) or {}
    return [
        (
            f"max serve, {_streams(n)}, {SERVED_AS[kind]} / CTranslate2 {kind} "
            "in process",
            ((ct2.get(kind) or {}).get("ratio_of_medians") or {}).get(str(n)),
            1.0,
        )
        for kind in SERVED_AS
        for n in (1, many)
    ]


def _figures(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def table(results: dict[str, Any]) -> str:
    """The CTranslate2 turns as report lines ("" when not run)."""
    ct2 = results.get(RESULTS_KEY)
    if not ct2:
        return ""
    lines = []
    check = ct2.get("check") or {}
    if "greedy_matches_transformers" in check:
        lines.append(
            "- CTranslate2 float32 greedy tokens equal transformers': "
            f"{'yes' if check['greedy_matches_transformers'] else 'NO'}"
            + "".join(
                f"; the converter ignores {k}={v}"
                for k, v in (check.get("config_the_converter_ignores") or {}).items()
            )
        )
    for kind, served in SERVED_AS.items():
        turns = ct2.get(kind) or {"skipped": "not run"}
        if "skipped" in turns:
            why = turns["skipped"][:200]
            lines.append(f"- CTranslate2 {kind}: not measured ({why})")
            continue
        for k, ratio in turns["ratio_of_medians"].items():
            lines.append(
                f"- {_streams(int(k))}, in turns: ours served {served} "
                f"{_figures(turns['ours'][k])} tok/s; CTranslate2 {kind} in process "
                f"{_figures(turns['ctranslate2'][k])}; ratio of the medians {ratio:.2f}"
            )
    return "\n".join(lines)
