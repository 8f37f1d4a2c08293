"""One command, one machine, one run: ours vs peers vs the machine's ceilings.

    python -m bench                 # DistilGPT2 shape, 1/4/16/32 streams x 128 tokens
    python -m bench --quick         # the smoke run the test suite uses
    python -m bench --encodings q4_k   # GGUF encodings measured next to float32

Every ratio to a peer is of medians over turns that alternate the two
sides (`served.py`, `one_stream.py`, `xl.py`): these machines' figures
move 10-30 % between moments of a run. Writes results.json, table.md and
throughput.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gpt2_lmhead_model import gpt2_arch
from gpt2_max.checkpoints import PRESETS, write_checkpoint
from gpt2_max.server import MaxServe, ServerProcess

from . import (
    ablations,
    ceilings,
    ctranslate2_turns,
    engine,
    one_stream,
    peer_llama_cpp,
    peer_venv,
    peer_vllm,
    peers,
    report,
    served,
    xl,
)
from .load import run_level
from .peer_venv import PeerUnavailable
from .workload import F32_SERVE_ARGS, gguf_serve_args, prompts, write_gguf_once

PEERS = ("llama.cpp", "vllm", "ctranslate2")
DEFAULT_ENCODINGS = "q8_0,q4_0,q4_k,q6_k,f16,bf16"


def cold_start(
    name: str, checkpoint: Path, args: list[str], arch: str, out: Path
) -> float:
    """Seconds `max serve` takes to answer with an empty compile cache."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-cache-") as cache:
        print(f"[{name}] cold start (empty compile cache)", flush=True)
        with MaxServe(
            checkpoint,
            args,
            log_path=out / f"{name}-cold.log",
            custom_architectures=arch,
            env={"XDG_CACHE_HOME": cache},
        ) as srv:
            return srv.startup_seconds or 0.0


def measure_gguf(
    checkpoint: Path,
    path: Path,
    out: Path,
    tokenizer: Any,
    levels: list[int],
    max_tokens: int,
) -> dict[str, Any]:
    """Ours served on a GGUF file at the fewest and most streams, and the
    engine alone at the most (one stream in process: `one_stream.py`)."""
    name = f"ours-{path.stem.rsplit('-', 1)[-1]}"
    args = gguf_serve_args(path)
    with MaxServe(checkpoint, args, log_path=out / f"{name}.log") as srv:
        run_level(srv.url, srv.model, prompts(tokenizer, 2, 16), 4)  # warm-up
        levels_run = [
            served.level_summary(
                run_level(srv.url, srv.model, prompts(tokenizer, n, 32), max_tokens)
            )
            for n in levels
        ]
    encoding, weight_path = args[3], Path(args[5])
    print(f"[{name}] engine alone", flush=True)
    many = engine.decode_tokens_per_second(
        checkpoint, levels[-1], encoding=encoding, weight_path=weight_path
    )
    return {
        "levels": levels_run,
        "engine": {str(levels[-1]): many},
        "args": args,
        "weight_bytes_per_token": ceilings.gguf_matmul_bytes(path),
    }


def llama_cpp_python(
    peers_requested: list[str], peers_dir: Path
) -> tuple[Path | None, str]:
    """The llama.cpp peer's python, or None and why it is not measured."""
    if "llama.cpp" not in peers_requested:
        return None, "llama.cpp is not among the peers requested"
    try:
        return peer_llama_cpp.install(peers_dir), ""
    except PeerUnavailable as e:
        return None, str(e)


def parse_args() -> argparse.Namespace:
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
        help="GGUF encodings measured next to float32, comma-separated "
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
        help="skip the GPT-2 XL shape (writes a 6.4 GB checkpoint; on by default "
        "except with --quick)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also the long ablations (bench/ablations.py), each in turns: runtime "
        "threads, metrics recording, echo, our ggml kernels against MAX's, GPT-2 "
        "XL at 1 and 8 streams",
    )
    opts = parser.parse_args()
    opts.peers_requested = split_list(opts.peers, "" if opts.quick else ",".join(PEERS))
    unknown = set(opts.peers_requested) - set(PEERS)
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}; known: {list(PEERS)}")
    return opts


def main() -> None:
    opts = parse_args()
    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    from transformers import GPT2Tokenizer

    from gpt2_max.checkpoints import TOKENIZER_DIR

    quick = opts.quick
    preset = "variant" if quick else "distilgpt2"
    levels = [1, 2] if quick else [1, 4, 16, 32]
    many = max(levels)
    max_tokens = 4 if quick else 128
    ttft_lengths = [8] if quick else [32, 512]
    rounds = 1 if quick else 3
    encodings = split_list(opts.encodings, "q4_0" if quick else DEFAULT_ENCODINGS)
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 1
    tokenizer = GPT2Tokenizer.from_pretrained(TOKENIZER_DIR)

    checkpoints = out / "checkpoints"
    gpt2 = checkpoints / preset
    if not (gpt2 / "config.json").exists():
        write_checkpoint(gpt2, preset)
    llama = peers.write_llama_checkpoint(checkpoints / f"llama-like-{preset}", preset)
    llama_args = [*F32_SERVE_ARGS, "--max-batch-size", str(many)]

    def probe() -> dict[str, Any]:
        print("[machine] bandwidth and GEMM", flush=True)
        return ceilings.measure(
            threads, 128 if quick else ceilings.PROBE_MIB, 512 if quick else 2048
        )

    machine = {**ceilings.machine_info(), **probe()}
    costs = ceilings.model_costs(PRESETS[preset], context=32 + max_tokens // 2)
    results: dict[str, Any] = {
        "model": f"{preset}-shaped GPT-2 (random weights)",
        "machine": machine,
        "costs": costs,
        "weight_bytes": {
            "gpt2": peers.parameter_bytes(gpt2),
            "llama": peers.parameter_bytes(llama),
        },
        "workload": {
            "prompt_tokens": 32,
            "output_tokens": max_tokens,
            "levels": levels,
            "rounds": rounds,
        },
        "peers_requested": opts.peers_requested,
        "load_average": {"start": os.getloadavg()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    started = time.monotonic()
    startup: dict[str, dict[str, float]] = {"ours": {}, "llama": {}}
    if not (quick or opts.no_cold):
        startup["ours"]["cold"] = cold_start(
            "ours", gpt2, F32_SERVE_ARGS, "gpt2_lmhead_model", out
        )
        startup["llama"]["cold"] = cold_start("llama", llama, llama_args, "", out)

    # Served: ours, MAX's Llama and vLLM up together, every level in turns.
    with ExitStack() as stack:
        servers: dict[str, ServerProcess] = {
            "ours": stack.enter_context(
                MaxServe(gpt2, F32_SERVE_ARGS, log_path=out / "ours.log")
            ),
            "llama": stack.enter_context(
                MaxServe(
                    llama,
                    llama_args,
                    log_path=out / "llama.log",
                    custom_architectures="",
                )
            ),
        }
        for side in ("ours", "llama"):
            startup[side]["warm"] = servers[side].startup_seconds or 0.0
        if "vllm" in opts.peers_requested:
            vllm, why = peer_vllm.start(stack, gpt2, out, opts.peers_dir, many)
            if vllm is None:
                results["vllm"] = {"skipped": why}
            else:
                servers["vllm"] = vllm
                startup["vllm"] = {"warm": vllm.startup_seconds or 0.0}
        measured = served.levels_in_turns(
            servers,
            tokenizer,
            levels,
            max_tokens,
            rounds,
            ttft_lengths,
            transformers=lambda batch: served.transformers_turn(
                gpt2, batch, max_tokens, threads
            ),
        )
    for side, data in measured.items():
        results[side] = (
            {**data, "startup_seconds": startup.get(side, {})}
            if side != "transformers"
            else data
        )

    save_partial(results, out)
    # The engine alone, ours and MAX's Llama in turns, at the most streams.
    many_engine = engine.in_turns(
        {"ours": (gpt2, {"architecture": gpt2_arch}), "llama": (llama, {})},
        many,
        rounds,
    )
    for side, turn in many_engine.items():
        results[side]["engine"] = {str(many): turn}

    files = {"f32": write_gguf_once(gpt2, out, "f32")} | {
        encoding: write_gguf_once(gpt2, out, encoding) for encoding in encodings
    }
    results["gguf"] = {
        encoding: measure_gguf(
            gpt2, files[encoding], out, tokenizer, [levels[0], many], max_tokens
        )
        for encoding in encodings
    }

    save_partial(results, out)
    # One stream in process against llama.cpp on every file, in turns,
    # each turn of ours bracketed by bandwidth probes.
    python, why_not = llama_cpp_python(opts.peers_requested, opts.peers_dir)
    bytes_per_token = {
        "f32": costs["weight_bytes_per_token"] + costs["kv_bytes_per_token"]
    } | {
        encoding: results["gguf"][encoding]["weight_bytes_per_token"]
        + costs["kv_bytes_per_token"]
        for encoding in encodings
    }
    served_labels = {"f32": F32_SERVE_ARGS} | (
        {"q8_0": gguf_serve_args(files["q8_0"])} if "q8_0" in files else {}
    )
    with ExitStack() as stack:
        one_servers = {
            label: stack.enter_context(
                MaxServe(gpt2, args, log_path=out / f"ours-{label}-turns.log")
            )
            for label, args in served_labels.items()
        }
        for srv in one_servers.values():
            run_level(srv.url, srv.model, prompts(tokenizer, 1, 16), 4)  # warm-up
        results["one_stream"] = one_stream.turns(
            gpt2,
            files,
            python,
            why_not=why_not,
            threads=threads,
            rounds={
                label: (1 if quick else 5 if label in served_labels else 3)
                for label in files
            },
            prefill_tokens=max(ttft_lengths),
            served=one_servers,
            served_prompt=prompts(tokenizer, 1, 32)[0],
            max_tokens=max_tokens,
            bytes_per_token=bytes_per_token,
        )

    save_partial(results, out)
    if "ctranslate2" in opts.peers_requested:
        results[ctranslate2_turns.RESULTS_KEY] = ctranslate2_turns.measure_peer(
            gpt2,
            files.get("q8_0"),
            prompts=prompts(tokenizer, many, 32),
            max_tokens=max_tokens,
            threads=threads,
            rounds=1 if quick else 5,
            streams=(1, many),
            out=out,
            peers_dir=opts.peers_dir,
        )

    save_partial(results, out)
    if not (quick or opts.no_xl):
        results["xl"] = xl.measure(out, python, threads=threads, rounds=rounds)

    save_partial(results, out)
    if opts.ablations:
        results["ablations"] = ablations.run(
            gpt2,
            out,
            tokenizer,
            threads=threads,
            rounds=rounds,
            max_tokens=max_tokens,
            quick=quick,
        )

    results["load_average"]["end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["duration_minutes"] = (time.monotonic() - started) / 60
    # The ceilings are the best the machine was seen to do: every probe of
    # the run, the brackets of each turn included.
    end = probe()
    machine["probes"] = [
        ceilings.ceiling_figures(machine),
        end,
        *bracket_probes(results),
    ]
    machine["bandwidth_probes"] = {
        "start": machine["read_bandwidth_probe"],
        "end": end["read_bandwidth_probe"],
    }
    machine.update(ceilings.best_of_probes(machine["probes"]))
    results["ceilings"] = ceilings.ceilings(machine, costs)
    print(report.write(results, out))


def bracket_probes(results: dict[str, Any]) -> list[dict[str, float]]:
    """Every bandwidth probe that bracketed a turn, as `{read_bandwidth_gbs}`."""
    probes = []
    for section in (results.get("one_stream") or {}, results.get("xl") or {}):
        for row in section.values():
            for turn in row.get("ours", []):
                for side in ("before", "after"):
                    gbs = turn.get("bandwidth", {}).get(side, {}).get("gbs")
                    if gbs:
                        probes.append({"read_bandwidth_gbs": gbs})
    return probes


def save_partial(results: dict[str, Any], out: Path) -> None:
    """What the run has measured so far, kept should a later stage fail."""
    (out / "results.partial.json").write_text(json.dumps(results, indent=2) + "\n")


def split_list(value: str | None, default: str) -> list[str]:
    return [x for x in (value if value is not None else default).split(",") if x]


if __name__ == "__main__":
    main()
