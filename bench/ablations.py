"""The long ablations (`python -m bench --ablations`): each switch the
project ships against its other side, measured in turns.

Single figures move 10-30 % between moments on these machines (their
memory bandwidth flips between ~34 and ~55 GB/s), so the two sides of an
ablation alternate, in ABBA order, and each figure is the median of its
turns; a bandwidth probe before each round shows which state it ran in.

- runtime threads: `max serve` as shipped against `GPT2_MAX_WORKER_NICE=0`
  (MAX's default priority for its CPU runtime's threads);
- metrics recording: as shipped (`NOOP` when nothing reads them) against
  MAX 26.7's default, `PROCESS`; both served, all three servers up;
- echo: `--enable-echo`'s graph against the default one (`echo_cost`);
- ggml kernels: Q4_K and Q6_K on this package's panel kernels against
  MAX's `ops.qmatmul` (`GPT2_MAX_GGML_KERNELS=max`), engine alone;
- GPT-2 XL shape, q4_k engine alone, 1 and 8 streams (one side only).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import gguf

from gpt2_lmhead_model.routing import GGML_KERNELS_SWITCH
from gpt2_lmhead_model.runtime_threads import NICE_VARIABLE, WORKER_NICE
from gpt2_max.checkpoints import write_checkpoint
from gpt2_max.server import METRIC_RECORDING, MaxServe

from . import ceilings, echo_cost, engine
from .load import run_level
from .served import only
from .turns import in_own_process, ratio_of_medians
from .workload import F32_SERVE_ARGS, gguf_serving, prompts, write_gguf_once

SHIPPED = {NICE_VARIABLE: str(WORKER_NICE), METRIC_RECORDING: "NOOP"}
SERVERS = {
    "shipped": SHIPPED,
    "nice 0": {**SHIPPED, NICE_VARIABLE: "0"},
    "metrics PROCESS": {**SHIPPED, METRIC_RECORDING: "PROCESS"},
}
"""Each served side's environment; MAX 26.7 defaults to nice 0 and
`PROCESS` (`max/serve/config.py`)."""
SERVED = {"runtime threads": "nice 0", "metrics recording": "metrics PROCESS"}
"""Served ablation -> the side compared with `shipped`."""
KERNELS = {"ours": "ours", "MAX qmatmul": "max"}
"""Kernel ablation side -> `GPT2_MAX_GGML_KERNELS`."""


def streams_label(n: int) -> str:
    return f"{n} stream{'s' if n > 1 else ''}"


def comparison(
    ablation: str, case: str, unit: str, turns: dict[str, list[float]]
) -> dict[str, Any]:
    """One row: each side's turns, and with two sides the first's median
    over the second's."""
    sides = list(turns)
    ratio = ratio_of_medians(*turns.values()) if len(sides) == 2 else None
    return {
        "ablation": ablation,
        "case": case,
        "unit": unit,
        "turns": turns,
        "ratio_of_medians": ratio,
    }


def in_turns(
    sides: dict[str, Callable[[], float]],
    rounds: int,
    before_round: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Each side once a round, the order reversed every other round (ABBA),
    so a drift in the machine's state hits every side alike."""
    turns: dict[str, list[float]] = {name: [] for name in sides}
    for turn in range(rounds):
        before_round()
        order = list(sides) if turn % 2 == 0 else list(reversed(sides))
        for name in order:
            turns[name].append(sides[name]())
    return turns


def run(
    checkpoint: Path,
    out: Path,
    tokenizer: Any,
    *,
    threads: int,
    rounds: int,
    max_tokens: int,
    quick: bool,
) -> dict[str, Any]:
    """Every ablation on the float32 `checkpoint` (and GGUF files of it
    written under `out`); `quick`: one round, few tokens, no XL."""
    rounds = 1 if quick else rounds
    bandwidth: list[float] = []
    prober = ceilings.BandwidthProbe(threads, 128 if quick else ceilings.PROBE_MIB)

    def probe() -> None:
        bandwidth.append(prober.measure()["gbs"])

    streams = [1, 2] if quick else [1, 32]
    rows = served(checkpoint, out, tokenizer, streams, max_tokens, rounds, probe)
    echo = (
        {"prompt_len": 16, "batch": 2, "repeats": 1, "decode_steps": 5} if quick else {}
    )
    rows += echo_rows(checkpoint, rounds, probe, **echo)
    steps = {"steps": 8, "warmup": 2} if quick else {}
    rows += kernel_rows(checkpoint, out, streams, rounds, probe, **steps)
    result: dict[str, Any] = {"rounds": rounds, "rows": rows}
    if not quick:
        xl = out / "checkpoints" / "gpt2-xl"
        if not (xl / "config.json").exists():
            print("[ablations] writing a gpt2-xl-shaped checkpoint", flush=True)
            write_checkpoint(xl, "gpt2-xl")
        rows += xl_rows(xl, out, rounds, probe)
    result["bandwidth_gbs"] = bandwidth
    return result


def served(
    checkpoint: Path,
    out: Path,
    tokenizer: Any,
    streams: list[int],
    max_tokens: int,
    rounds: int,
    probe: Callable[[], None],
) -> list[dict[str, Any]]:
    """The runtime-threads and metrics ablations: all of `SERVERS` up, each
    level in turns across them, the others paused (`served.only`)."""
    rows = []
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                MaxServe(
                    checkpoint,
                    F32_SERVE_ARGS,
                    env=env,
                    log_path=out / f"ablation-{name.replace(' ', '-')}.log",
                )
            )
            for name, env in SERVERS.items()
        }
        for srv in servers.values():
            run_level(srv.url, srv.model, prompts(tokenizer, 2, 16), 4)  # warm-up

        def level(name: str, n: int) -> Callable[[], float]:
            srv = servers[name]
            work = prompts(tokenizer, n, 32)

            def turn() -> float:
                with only(srv, servers.values()):
                    return run_level(
                        srv.url, srv.model, work, max_tokens
                    ).tokens_per_second

            return turn

        for n in streams:
            print(f"[ablations] served, {n} streams", flush=True)
            turns = in_turns({name: level(name, n) for name in servers}, rounds, probe)
            for ablation, other in SERVED.items():
                sides = {"shipped": turns["shipped"], other: turns[other]}
                rows.append(comparison(ablation, streams_label(n), "tok/s", sides))
    return rows


def echo_rows(
    checkpoint: Path, rounds: int, probe: Callable[[], None], **kwargs: Any
) -> list[dict[str, Any]]:
    """`echo_cost` (both graphs loaded, alternating within) once a round,
    each round's medians a turn."""
    print("[ablations] echo", flush=True)
    runs = []
    for _ in range(rounds):
        probe()
        runs.append(in_own_process(echo_cost.echo_cost, checkpoint, **kwargs))
    return [
        comparison(
            "echo",
            figure.removesuffix("_ms").replace("_", " "),
            "ms",
            {
                name: [r[graph][figure] for r in runs]
                for name, graph in (("echo", "enable_echo"), ("default", "default"))
            },
        )
        for figure in ("prefill_ms", "decode_step_ms")
    ]


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """`name=value` for the processes started meanwhile."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def engine_tps(
    checkpoint: Path, batch: int, path: Path, switch: str, **kwargs: Any
) -> float:
    """Decode tokens per second of the engine alone on the GGUF `path`,
    with `GPT2_MAX_GGML_KERNELS=switch`, in a process of its own."""
    encoding, weight_path = gguf_serving(path)
    with environment(GGML_KERNELS_SWITCH, switch):
        return engine.decode_tokens_per_second(
            checkpoint, batch, encoding=encoding, weight_path=weight_path, **kwargs
        )["tokens_per_second"]


def matrix_types(path: Path) -> dict[str, int]:
    """How many 2-D tensors (matrices, embeddings) the file stores in each
    ggml type: rows that are not whole K-quant blocks (GPT-2 XL's 1600, the
    variant preset's 96) are stored in Q8_0, where the switch changes
    nothing."""
    tensors = gguf.GGUFReader(path).tensors
    return dict(Counter(t.tensor_type.name for t in tensors if len(t.shape) == 2))


def kernel_rows(
    checkpoint: Path,
    out: Path,
    batches: list[int],
    rounds: int,
    probe: Callable[[], None],
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Ours against MAX's qmatmul on q4_k and q6_k files, engine alone."""
    rows = []
    for file_encoding in ("q4_k", "q6_k"):
        path = write_gguf_once(checkpoint, out, file_encoding)
        for batch in batches:
            print(f"[ablations] {file_encoding} kernels, batch {batch}", flush=True)
            sides = {
                side: lambda s=switch, b=batch, p=path: engine_tps(
                    checkpoint, b, p, s, **kwargs
                )
                for side, switch in KERNELS.items()
            }
            row = comparison(
                "ggml kernels",
                f"{file_encoding}, batch {batch}",
                "tok/s",
                in_turns(sides, rounds, probe),
            )
            rows.append({**row, "matrix_types": matrix_types(path)})
    return rows


def xl_rows(
    checkpoint: Path, out: Path, rounds: int, probe: Callable[[], None]
) -> list[dict[str, Any]]:
    """The q4_k file of `checkpoint` (GPT-2 XL's shape), engine alone, 1 and
    8 streams in turns: no other side, each row its tok/s and per stream."""
    path = write_gguf_once(checkpoint, out, "q4_k")
    batches = {streams_label(b): b for b in (1, 8)}
    sides = {
        name: lambda b=b: engine_tps(checkpoint, b, path, "ours", steps=24, warmup=3)
        for name, b in batches.items()
    }
    print(f"[ablations] {checkpoint.name} q4_k, 1 and 8 streams", flush=True)
    turns = in_turns(sides, rounds, probe)
    rows = []
    for name, batch in batches.items():
        per_stream = {"per stream": [t / batch for t in turns[name]]}
        row = comparison(f"{checkpoint.name} q4_k", name, "tok/s", {"all": turns[name]})
        row["turns"].update(per_stream)
        rows.append({**row, "matrix_types": matrix_types(path)})
    return rows


def _figures(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def table(results: dict[str, Any]) -> str:
    """Markdown: per ablation and case, each side's turns and median, and
    the ratio of the medians (first side over second)."""
    lines = [
        f"Ablations, {results['rounds']} round(s) of turns; bandwidth probed "
        f"before each: {_figures(results.get('bandwidth_gbs', []))} GB/s",
        "",
        "| ablation | case | side | turns | median | ratio of medians |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for row in results["rows"]:
        ratio = row["ratio_of_medians"]
        for i, (side, turns) in enumerate(row["turns"].items()):
            shown = f"{ratio:.3f}" if ratio is not None and i == 0 else ""
            lines.append(
                f"| {row['ablation']} | {row['case']} | {side} | {_figures(turns)} "
                f"| {statistics.median(turns):.4g} {row['unit']} | {shown} |"
            )
    return "\n".join(lines) + "\n"
