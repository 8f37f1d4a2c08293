"""One command, one machine, one run: ours vs peers vs the machine's ceilings.

    python -m bench                 # DistilGPT2 shape, 1/4/16/32 streams x 128 tokens
    python -m bench --quick         # the smoke run the test suite uses
    python -m bench --encodings q4_k   # GGUF encodings measured next to float32

Writes results.json, table.md and throughput.png to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

from gpt2_lmhead_model import gpt2_arch
from gpt2_max.checkpoints import PRESETS, write_checkpoint
from gpt2_max.server import MaxServe, ServerProcess

from . import (
    ceilings,
    engine,
    peer_llama_cpp,
    peer_venv,
    peer_vllm,
    peers,
    q8_0_turns,
    report,
)
from .load import LevelResult, run_level
from .peer_venv import PeerUnavailable
from .peer_vllm import VllmServe
from .workload import F32_SERVE_ARGS, gguf_serving, prompts, write_gguf_once

PEERS = ("llama.cpp", "vllm")
DEFAULT_ENCODINGS = "q8_0,q4_0,q4_k,q6_k,f16,bf16"


def machine_info() -> dict[str, Any]:
    flags: list[str] = []
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "fma", "amx", "sse4", "f16c"))]
    return {"cores": os.cpu_count(), "cpu": model, "simd_flags": sorted(simd)}


def level_summary(level: LevelResult) -> dict[str, Any]:
    gaps = sorted(g for s in level.streams for g in s.inter_token)
    pct = (
        statistics.quantiles(gaps, n=100)
        if len(gaps) > 1
        else [gaps[0]] * 99
        if gaps
        else [0.0] * 99
    )
    return {
        "concurrency": level.concurrency,
        "tokens_per_second": level.tokens_per_second,
        "output_tokens": level.output_tokens,
        "wall_seconds": level.wall_seconds,
        "itl_p50_ms": pct[49] * 1000,
        "itl_p99_ms": pct[98] * 1000,
    }


def measure_levels(
    srv: ServerProcess,
    name: str,
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
    ttft_lengths: list[int],
) -> dict[str, Any]:
    """Streams at each concurrency level, then time to first token alone."""
    run_level(srv.url, srv.model, prompts(tokenizer, 2, 16), 4)  # warm-up
    results = []
    for n in levels:
        level = run_level(srv.url, srv.model, prompts(tokenizer, n, 32), max_tokens)
        results.append(level_summary(level))
        tps = results[-1]["tokens_per_second"]
        print(f"[{name}] {n} streams: {tps:.1f} tok/s", flush=True)
    ttft = {}
    for length in ttft_lengths:
        times = [
            run_level(srv.url, srv.model, [p], 2).streams[0].ttft
            for p in prompts(tokenizer, 5, length)
        ]
        ttft[str(length)] = statistics.median(times)
    return {"levels": results, "ttft_seconds": ttft}


def serve_and_measure(
    name: str,
    checkpoint: Path,
    args: list[str],
    custom_architectures: str,
    out: Path,
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
    ttft_lengths: list[int],
    cold: bool,
) -> dict[str, Any]:
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"{name}-cache-") as cache:
        env = {"XDG_CACHE_HOME": cache} if cold else {}
        if cold:
            print(f"[{name}] cold start (empty compile cache)", flush=True)
            with MaxServe(
                checkpoint,
                args,
                log_path=out / f"{name}-cold.log",
                custom_architectures=custom_architectures,
                env=env,
            ) as srv:
                startup["cold"] = srv.startup_seconds or 0.0
        print(f"[{name}] warm start", flush=True)
        with MaxServe(
            checkpoint,
            args,
            log_path=out / f"{name}.log",
            custom_architectures=custom_architectures,
            env=env,
        ) as srv:
            startup["warm"] = srv.startup_seconds or 0.0
            measured = measure_levels(
                srv, name, tokenizer, levels, max_tokens, ttft_lengths
            )
    return {**measured, "startup_seconds": startup, "args": args}


def measure_vllm(
    checkpoint: Path,
    out: Path,
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
    ttft_lengths: list[int],
    peers_dir: Path,
    rounds: int,
) -> dict[str, Any]:
    """vLLM CPU serving the float32 checkpoint, or why it could not; then,
    with `rounds`, its most streams and ours in turns, both servers up."""
    try:
        python = peer_vllm.install(peers_dir)
        print("[vllm] start", flush=True)
        with VllmServe(
            python, checkpoint, max_num_seqs=max(levels), log_path=out / "vllm.log"
        ) as srv:
            measured = measure_levels(
                srv, "vllm", tokenizer, levels, max_tokens, ttft_lengths
            )
            startup = srv.startup_seconds or 0.0
            if rounds:
                measured["many_stream_rounds"] = many_streams_in_turns(
                    srv, checkpoint, out, tokenizer, max(levels), max_tokens, rounds
                )
    except (PeerUnavailable, RuntimeError, TimeoutError) as e:
        why = peer_vllm.failure(out / "vllm.log") or str(e)[-500:]
        print(f"[vllm] skipped: {why}", flush=True)
        return {"skipped": why}
    return {**measured, "startup_seconds": {"warm": startup}}


def many_streams_in_turns(
    vllm: ServerProcess,
    checkpoint: Path,
    out: Path,
    tokenizer: Any,
    streams: int,
    max_tokens: int,
    rounds: int,
) -> dict[str, Any]:
    """Ours and vLLM, `streams` streams each, in turns with both servers up
    (idle, each takes 1-4 % of a core): the served figures move as much
    as one stream's between moments of a run."""
    ours: list[float] = []
    theirs: list[float] = []
    with MaxServe(
        checkpoint, F32_SERVE_ARGS, log_path=out / "ours-many-stream-turns.log"
    ) as srv:
        run_level(srv.url, srv.model, prompts(tokenizer, 2, 16), 4)  # warm-up
        for turn in range(rounds):
            print(f"[{streams} streams] round {turn + 1} of {rounds}", flush=True)
            for server, figures in ((srv, ours), (vllm, theirs)):
                level = run_level(
                    server.url,
                    server.model,
                    prompts(tokenizer, streams, 32),
                    max_tokens,
                )
                figures.append(level.tokens_per_second)
    return {
        "streams": streams,
        "ours": ours,
        "vllm": theirs,
        "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
    }


def measure_llama_cpp(
    files: dict[str, Path], peers_dir: Path, threads: int
) -> dict[str, Any]:
    """llama.cpp in process on each GGUF, or why it could not run."""
    try:
        python = peer_llama_cpp.install(peers_dir)
    except PeerUnavailable as e:
        print(f"[llama.cpp] skipped: {e}", flush=True)
        return {label: {"skipped": str(e)} for label in files}
    print(f"[llama.cpp] {', '.join(files)}", flush=True)
    return peer_llama_cpp.measure(python, files, threads=threads)


def llama_cpp_python(peers: list[str], peers_dir: Path) -> tuple[Path | None, str]:
    """The llama.cpp peer's python, or None and why it is not measured."""
    if "llama.cpp" not in peers:
        return None, "llama.cpp is not among the peers requested"
    try:
        return peer_llama_cpp.install(peers_dir), ""
    except PeerUnavailable as e:
        return None, str(e)


def measure_gguf(
    checkpoint: Path,
    encoding: str,
    out: Path,
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
) -> dict[str, Any]:
    """Ours on the checkpoint converted to a GGUF `encoding`: one and many
    streams served, and the engine alone."""
    path = write_gguf_once(checkpoint, out, encoding)
    served_encoding, weight_path = gguf_serving(path)
    args = [
        "--devices",
        "cpu",
        "--quantization-encoding",
        served_encoding,
        "--weight-path",
        str(weight_path),
    ]
    result = serve_and_measure(
        f"ours-{encoding}",
        checkpoint,
        args,
        "gpt2_lmhead_model",
        out,
        tokenizer,
        levels,
        max_tokens,
        [],
        cold=False,
    )
    print(f"[ours-{encoding}] engine alone", flush=True)
    result["engine"] = {
        str(b): engine.decode_tokens_per_second(
            checkpoint, b, encoding=served_encoding, weight_path=weight_path
        )
        for b in (levels[0], levels[-1])
    }
    result["weight_bytes_per_token"] = ceilings.gguf_matmul_bytes(path)
    return result


def alternate_one_stream(
    checkpoint: Path,
    f32_gguf: Path,
    peers_dir: Path,
    threads: int,
    rounds: int,
    tokenizer: Any,
    max_tokens: int,
    out: Path,
) -> dict[str, Any]:
    """Ours (engine alone, then `max serve`) and llama.cpp, one stream,
    float32, in turns, each turn of ours just after a bandwidth probe.

    Single figures of either move 10-30 % run to run on these machines, and
    the machine's bandwidth with them (probes of 33 and 58 GB/s in one
    run): rounds of both let drifting load hit both alike, and the floors
    are the ratios of the medians and the median of each turn's share of
    the bandwidth probed beside it. The server stays up (idle, ~3 % of a
    core) through every turn, llama.cpp's included."""
    try:
        python = peer_llama_cpp.install(peers_dir)
    except PeerUnavailable as e:
        return {"skipped": str(e)}
    ours: list[float] = []
    served: list[float] = []
    theirs: list[float] = []
    bandwidth: list[float] = []
    with MaxServe(
        checkpoint, F32_SERVE_ARGS, log_path=out / "ours-one-stream-turns.log"
    ) as srv:
        run_level(srv.url, srv.model, prompts(tokenizer, 1, 16), 4)  # warm-up
        for turn in range(rounds):
            print(f"[one stream] round {turn + 1} of {rounds}", flush=True)
            bandwidth.append(ceilings.read_bandwidth_gbs(threads))
            ours.append(
                engine.decode_tokens_per_second(checkpoint, 1, architecture=gpt2_arch)[
                    "tokens_per_second"
                ]
            )
            level = run_level(srv.url, srv.model, prompts(tokenizer, 1, 32), max_tokens)
            served.append(level.tokens_per_second)
            row = peer_llama_cpp.measure(python, {"f32": f32_gguf}, threads=threads)
            if "skipped" in row["f32"]:
                return {"skipped": row["f32"]["skipped"]}
            theirs.append(row["f32"]["tokens_per_second"])
    return {
        "ours": ours,
        "served": served,
        "llama.cpp": theirs,
        "bandwidth_gbs": bandwidth,
        "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
        "served_ratio_of_medians": statistics.median(served)
        / statistics.median(theirs),
    }


def measure_xl(
    out: Path,
    encodings: list[str],
    peers: list[str],
    peers_dir: Path,
    threads: int,
    rounds: int,
) -> dict[str, Any]:
    """GPT-2 XL shape, one stream, engine alone: ours and llama.cpp on the
    same files, in turns per encoding (each figure the median of its
    `rounds` turns). Where bandwidth matters most: 6.2 GB of float32 per
    token, ~50 s a turn, long enough for the machine to change state
    between two figures taken minutes apart (5.05 against llama.cpp's
    5.98 tok/s that way; 4.94 against 4.61 and 4.96 in turns)."""
    checkpoint = out / "checkpoints" / "gpt2-xl"
    if not (checkpoint / "config.json").exists():
        print("[xl] writing a gpt2-xl-shaped checkpoint", flush=True)
        write_checkpoint(checkpoint, "gpt2-xl")
    files = {
        encoding: write_gguf_once(checkpoint, out, encoding) for encoding in encodings
    }
    result: dict[str, Any] = {
        "weight_bytes_per_token": {
            encoding: ceilings.gguf_matmul_bytes(path)
            for encoding, path in files.items()
        }
    }
    python = None
    if "llama.cpp" in peers:
        try:
            python = peer_llama_cpp.install(peers_dir)
        except PeerUnavailable as e:
            result["llama.cpp"] = {label: {"skipped": str(e)} for label in files}
    ours: dict[str, list[dict[str, Any]]] = {encoding: [] for encoding in files}
    theirs: dict[str, list[dict[str, Any]]] = {encoding: [] for encoding in files}
    for turn in range(rounds):
        for encoding, path in files.items():
            print(f"[xl] {encoding}, round {turn + 1} of {rounds}", flush=True)
            served_encoding, weight_path = gguf_serving(path)
            ours[encoding].append(
                engine.decode_tokens_per_second(
                    checkpoint,
                    1,
                    encoding=served_encoding,
                    weight_path=None if encoding == "f32" else weight_path,
                    steps=24,
                    warmup=3,
                )
            )
            if python is not None:
                row = peer_llama_cpp.measure(python, {encoding: path}, threads=threads)
                theirs[encoding].append(row[encoding])
    result["ours"] = {encoding: _median_turn(turns) for encoding, turns in ours.items()}
    if python is not None:
        result["llama.cpp"] = {
            encoding: _median_turn(turns) for encoding, turns in theirs.items()
        }
    return result


def _median_turn(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """The turn of median speed (the lower one of an even count), whole,
    with every turn's speed beside it."""
    if any("skipped" in turn for turn in turns):
        return next(turn for turn in turns if "skipped" in turn)
    ranked = sorted(turns, key=lambda turn: turn["tokens_per_second"])
    return {
        **ranked[(len(ranked) - 1) // 2],
        "turns": [turn["tokens_per_second"] for turn in turns],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny config, few tokens: a smoke run"
    )
    parser.add_argument(
        "--no-cold", action="store_true", help="skip cold-compile start times"
    )
    parser.add_argument(
        "--encodings",
        default=None,
        help="GGUF encodings to measure next to float32, comma-separated "
        f"(default {DEFAULT_ENCODINGS}; --quick: q4_0; '' for none)",
    )
    parser.add_argument(
        "--peers",
        default=None,
        help="peers installed in their own venvs and measured, comma-separated "
        f"(default {','.join(PEERS)}; --quick: none; '' for none)",
    )
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=peer_venv.PEERS_DIR,
        help="where the peers' venvs are created and reused",
    )
    parser.add_argument(
        "--no-xl",
        action="store_true",
        help="skip the GPT-2 XL shape (writes a 6.2 GB checkpoint; on by default "
        "except with --quick)",
    )
    opts = parser.parse_args()

    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    from transformers import GPT2Tokenizer

    from gpt2_max.checkpoints import TOKENIZER_DIR

    preset = "variant" if opts.quick else "distilgpt2"
    levels = [1, 2] if opts.quick else [1, 4, 16, 32]
    max_tokens = 4 if opts.quick else 128
    ttft_lengths = [8] if opts.quick else [32, 512]
    hf_batches = [1, 2] if opts.quick else [1, 4, 16, 32]
    cold = not (opts.quick or opts.no_cold)
    default_encodings = "q4_0" if opts.quick else DEFAULT_ENCODINGS
    encodings = split_list(opts.encodings, default_encodings)
    peers_requested = split_list(opts.peers, "" if opts.quick else ",".join(PEERS))
    unknown = set(peers_requested) - set(PEERS)
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}; known: {list(PEERS)}")
    xl = not (opts.quick or opts.no_xl)
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 1
    tokenizer = GPT2Tokenizer.from_pretrained(TOKENIZER_DIR)

    checkpoints = out / "checkpoints"
    gpt2 = checkpoints / preset
    if not (gpt2 / "config.json").exists():
        write_checkpoint(gpt2, preset)
    llama = peers.write_llama_checkpoint(checkpoints / f"llama-like-{preset}", preset)

    def probe() -> dict[str, float]:
        print("[machine] bandwidth and GEMM", flush=True)
        return ceilings.measure(
            threads, 128 if opts.quick else 1024, 512 if opts.quick else 2048
        )

    machine = {**machine_info(), **probe()}
    costs = ceilings.model_costs(PRESETS[preset], context=32 + max_tokens // 2)
    results: dict[str, Any] = {
        "model": f"{preset}-shaped GPT-2 (random weights)",
        "machine": machine,
        "costs": costs,
        "ceilings": ceilings.ceilings(machine, costs),
        "weight_bytes": {
            "gpt2": peers.parameter_bytes(gpt2),
            "llama": peers.parameter_bytes(llama),
        },
        "workload": {
            "prompt_tokens": 32,
            "output_tokens": max_tokens,
            "levels": levels,
        },
        "peers_requested": peers_requested,
        "load_average": {"start": os.getloadavg()},
    }
    common = F32_SERVE_ARGS
    results["ours"] = serve_and_measure(
        "ours",
        gpt2,
        common,
        "gpt2_lmhead_model",
        out,
        tokenizer,
        levels,
        max_tokens,
        ttft_lengths,
        cold,
    )
    batch = max(levels)
    results["llama"] = serve_and_measure(
        "llama",
        llama,
        [*common, "--max-batch-size", str(batch)],
        "",
        out,
        tokenizer,
        levels,
        max_tokens,
        ttft_lengths,
        cold,
    )
    if "vllm" in peers_requested:
        results["vllm"] = measure_vllm(
            gpt2,
            out,
            tokenizer,
            levels,
            max_tokens,
            ttft_lengths,
            opts.peers_dir,
            rounds=0 if opts.quick else 3,
        )
    prefill_tokens = max(ttft_lengths)
    for side, checkpoint in (("ours", gpt2), ("llama", llama)):
        print(f"[{side}] engine alone", flush=True)
        arch = gpt2_arch if side == "ours" else None
        results[side]["engine"] = {
            str(b): engine.decode_tokens_per_second(
                checkpoint,
                b,
                architecture=arch,
                prefill_tokens=prefill_tokens if b == 1 else 0,
            )
            for b in (1, max(levels))
        }
    hf: dict[str, Any] = {}
    for b in hf_batches:
        print(f"[transformers] batch {b}", flush=True)
        hf[str(b)] = peers.transformers_throughput(
            gpt2, prompts(tokenizer, b, 32), max_tokens, threads
        )
    results["transformers"] = hf
    gguf_levels = [levels[0], levels[-1]]
    results["gguf"] = {
        encoding: measure_gguf(gpt2, encoding, out, tokenizer, gguf_levels, max_tokens)
        for encoding in encodings
    }
    if "llama.cpp" in peers_requested:
        files = {
            encoding: write_gguf_once(gpt2, out, encoding)
            for encoding in ["f32", *encodings]
        }
        results["llama.cpp"] = measure_llama_cpp(files, opts.peers_dir, threads)
        results["one_stream_rounds"] = alternate_one_stream(
            gpt2,
            files["f32"],
            opts.peers_dir,
            threads,
            rounds=5,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            out=out,
        )
    if q8_0_turns.ENCODING in encodings:
        path = write_gguf_once(gpt2, out, q8_0_turns.ENCODING)
        python, why_not = llama_cpp_python(peers_requested, opts.peers_dir)
        results[q8_0_turns.RESULTS_KEY] = q8_0_turns.served_one_stream_in_turns(
            gpt2,
            path,
            *gguf_serving(path),
            python,
            why_not=why_not,
            threads=threads,
            rounds=5,
            prompt=prompts(tokenizer, 1, 32)[0],
            max_tokens=max_tokens,
            log_path=out / f"ours-{q8_0_turns.ENCODING}-turns.log",
        )
    if xl:
        results["xl"] = measure_xl(
            out,
            ["f32", "f16", "q4_k"],
            peers_requested,
            opts.peers_dir,
            threads,
            rounds=3,
        )
    results["load_average"]["end"] = os.getloadavg()
    # A ceiling is the best the machine was seen to do: a probe of a few
    # tens of milliseconds can land on a busy moment (34.9 at the start of
    # one run, 47 GB/s a minute after it), so it runs again at the end.
    machine["probes"] = [ceilings.ceiling_figures(machine), probe()]
    machine.update(ceilings.best_of_probes(machine["probes"]))
    results["ceilings"] = ceilings.ceilings(machine, costs)
    print(report.write(results, out))


def split_list(value: str | None, default: str) -> list[str]:
    return [x for x in (value if value is not None else default).split(",") if x]


if __name__ == "__main__":
    main()
