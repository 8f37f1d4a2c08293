"""Benchmark results: a JSON file, a markdown table and a PNG plot.

Every figure printed is from the run's `results.json`; the medians of
turns are computed here from the turns it lists.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from . import ablations, ctranslate2_turns, floors
from .floors import ratio


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _turns(values: list[float], digits: int = 1) -> str:
    return ", ".join(_fmt(v, digits) for v in values)


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def roofline(ceil: dict[str, float], streams: int) -> float:
    """n streams share each weight read, until compute runs out."""
    return min(
        streams * ceil["one_stream_tokens_per_second"],
        ceil["large_batch_tokens_per_second"],
    )


def _level(side: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    return next(
        (lv for lv in (side or {}).get("levels", []) if lv["concurrency"] == n), None
    )


def served_table(results: dict[str, Any]) -> str:
    """Served tok/s per level, each the median of its turns."""
    ours, ceil = results["ours"], results["ceilings"]
    hf = results.get("transformers") or {}
    rows = [
        "| streams | ours tok/s | MAX Llama tok/s | ours / Llama | vLLM CPU tok/s "
        "| ours / vLLM | transformers tok/s (batch) | ours / transformers "
        "| ours / ceiling | ours ITL p50 / p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in ours["levels"]:
        n = level["concurrency"]
        mine = _median(level["turns"])
        cells = [str(n), _fmt(mine)]
        for peer in (_level(results.get("llama"), n), _level(results.get("vllm"), n)):
            theirs = _median(peer["turns"]) if peer else None
            cells += [_fmt(theirs), _fmt(ratio(mine, theirs), 2)]
        hf_turn = hf.get(str(n))
        theirs = _median(hf_turn["turns"]) if hf_turn else None
        cells += [_fmt(theirs), _fmt(ratio(mine, theirs), 2)]
        cells += [
            _fmt(ratio(mine, roofline(ceil, n)), 2),
            f"{_fmt(level['itl_p50_ms'])} / {_fmt(level['itl_p99_ms'])}",
        ]
        rows.append(f"| {' | '.join(cells)} |")
    lines = ["\n".join(rows), ""]
    rounds = results["workload"].get("rounds")
    lines.append(
        f"- each figure is the median of {rounds} turns, all servers up, "
        "alternating level by level; turns (tok/s):"
    )
    for side in ("ours", "llama", "vllm"):
        for level in (results.get(side) or {}).get("levels", []):
            lines.append(
                f"  - {side} at {level['concurrency']}: {_turns(level['turns'])}"
            )
    for name, key in (("ours", "ours"), ("MAX Llama", "llama"), ("vLLM CPU", "vllm")):
        data = results.get(key) or {}
        if "skipped" in data:
            lines.append(f"- {name}: skipped ({data['skipped'][:300]})")
            continue
        if not data:
            continue
        ttft = ", ".join(
            f"{k}-token prompt {_fmt(v * 1000, 0)} ms"
            for k, v in data.get("ttft_seconds", {}).items()
        )
        start = ", ".join(
            f"{k} {_fmt(v)} s" for k, v in data.get("startup_seconds", {}).items()
        )
        lines.append(
            f"- {name}: time to first token (median of the turns) {ttft}"
            + (f"; server start {start}" if start else "")
        )
        for b, e in data.get("engine", {}).items():
            lines.append(
                f"  - engine alone (in process, batch {b}, in turns with the "
                f"other engine): {_turns(e['turns'])} tok/s, median "
                f"{_fmt(_median(e['turns']))}"
            )
    lines.append(
        f"- ceilings: one stream {_fmt(ceil['one_stream_tokens_per_second'])} "
        f"tok/s (read bandwidth {_fmt(results['machine']['read_bandwidth_gbs'])} "
        f"GB/s, the best probe of the run), large batch "
        f"{_fmt(ceil['large_batch_tokens_per_second'])} tok/s (float32 GEMM "
        f"{_fmt(results['machine']['gemm_gflops'])} GFLOP/s)"
    )
    probes = results["machine"].get("bandwidth_probes") or {}
    if probes:
        lines.append(
            "- bandwidth probes of the run, sum / GEMV GB/s: "
            + "; ".join(
                f"{when} {_fmt(p['sum_gbs'])} / {_fmt(p['gemv_gbs'])}"
                for when, p in probes.items()
            )
        )
    return "\n".join(lines)


def gguf_table(results: dict[str, Any]) -> str:
    """GGUF encodings next to float32, all measured in this run."""
    gguf = results.get("gguf") or {}
    if not gguf:
        return ""
    one = results.get("one_stream") or {}
    many = max(results["workload"]["levels"])
    f32_served = {
        lv["concurrency"]: _median(lv["turns"]) for lv in results["ours"]["levels"]
    }
    f32_engine = _median((one.get("f32") or {}).get("ours_tokens_per_second"))
    rows = [
        f"| encoding | MB read / token | served 1 stream tok/s | x float32 "
        f"| served {many} streams tok/s | x float32 | engine 1 stream tok/s "
        f"(median of turns) | x float32 | engine {many} streams tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| float32 | {_fmt(results['costs']['weight_bytes_per_token'] / 1e6)} "
        f"| {_fmt(f32_served.get(1))} | 1.00 | {_fmt(f32_served.get(many))} | 1.00 "
        f"| {_fmt(f32_engine)} | 1.00 "
        f"| {_fmt(floors.engine_tps(results, 'ours', many))} |",
    ]
    for encoding, data in gguf.items():
        tps = {lv["concurrency"]: lv["tokens_per_second"] for lv in data["levels"]}
        engine_one = _median((one.get(encoding) or {}).get("ours_tokens_per_second"))
        engine_many = data["engine"][str(many)]["tokens_per_second"]
        rows.append(
            f"| {encoding} | {_fmt(data['weight_bytes_per_token'] / 1e6)} "
            f"| {_fmt(tps[1])} | {_fmt(ratio(tps[1], f32_served.get(1)), 2)} "
            f"| {_fmt(tps[many])} | {_fmt(ratio(tps[many], f32_served.get(many)), 2)} "
            f"| {_fmt(engine_one)} | {_fmt(ratio(engine_one, f32_engine), 2)} "
            f"| {_fmt(engine_many)} |"
        )
    rows.append(
        "\n- served figures of the GGUF files are single measurements (one "
        "server at a time), not turns: their x float32 columns compare moments"
    )
    return "\n".join(rows)


def one_stream_table(results: dict[str, Any]) -> str:
    """One stream in process against llama.cpp on the same files, in turns."""
    one = results.get("one_stream") or {}
    if not one:
        return ""
    rows = [
        "| file | ours engine tok/s | llama.cpp tok/s | ours / llama.cpp "
        "| ours served tok/s | served / llama.cpp | share of bracketing bandwidth "
        "| prefill speed / llama.cpp |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    details = []
    for label, row in one.items():
        theirs = row.get("llama.cpp") or {}
        share = row.get("bandwidth_share") or {}
        their_tps = row.get("llama_cpp_tokens_per_second")
        rows.append(
            f"| {label} | {_fmt(_median(row['ours_tokens_per_second']))} "
            f"| {_fmt(_median(their_tps)) if their_tps else 'skipped'} "
            f"| {_fmt(row.get('ratio_of_medians'), 2)} "
            f"| {_fmt(_median(row.get('served_tokens_per_second')))} "
            f"| {_fmt(row.get('served_ratio_of_medians'), 2)} "
            f"| {_fmt(share.get('median'), 2)} "
            f"| {_fmt(row.get('prefill_speed_ratio'), 2)} |"
        )
        line = f"  - {label}: ours {_turns(row['ours_tokens_per_second'])}"
        if their_tps:
            line += f"; llama.cpp {_turns(their_tps)}"
        elif "skipped" in theirs:
            line += f"; llama.cpp skipped ({theirs['skipped'][:160]})"
        if row.get("served_tokens_per_second"):
            line += f"; ours served {_turns(row['served_tokens_per_second'])}"
        brackets = [t["bandwidth"]["gbs"] for t in row["ours"] if "bandwidth" in t]
        if brackets:
            line += (
                f"; bracketing bandwidth {_turns(brackets)} GB/s, shares "
                f"{_turns(share['shares'], 2)}"
            )
        details.append(line)
    return "\n".join(
        [
            *rows,
            "",
            "- each cell the median of its turns (ours engine, ours served, then "
            "llama.cpp, alternating); prefill: one 512-token prompt, llama.cpp's "
            "seconds over ours; turns (tok/s):",
            *details,
        ]
    )


def xl_table(results: dict[str, Any]) -> str:
    xl = results.get("xl")
    if not xl:
        return ""
    rows = [
        "| GPT-2 XL shape, 1 stream | MB read / token | ours engine tok/s "
        "| share of bracketing bandwidth | llama.cpp tok/s | ours / llama.cpp |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    details = []
    for encoding, row in xl.items():
        their_tps = row.get("llama_cpp_tokens_per_second")
        rows.append(
            f"| {encoding} | {_fmt(row['bytes_per_token'] / 1e6)} "
            f"| {_fmt(_median(row['ours_tokens_per_second']), 2)} "
            f"| {_fmt(row['bandwidth_share']['median'], 2)} "
            f"| {_fmt(_median(their_tps), 2) if their_tps else 'not run'} "
            f"| {_fmt(row.get('ratio_of_medians'), 2)} |"
        )
        details.append(
            f"  - {encoding}: ours {_turns(row['ours_tokens_per_second'], 2)}"
            + (f"; llama.cpp {_turns(their_tps, 2)}" if their_tps else "")
            + f"; shares {_turns(row['bandwidth_share']['shares'], 2)}"
        )
    return "\n".join([*rows, "", "- turns (tok/s):", *details])


def floor_rows(results: dict[str, Any]) -> list[floors.FloorRow]:
    return floors.rows(results)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, key, style in (
        ("ours (GPT-2 on MAX)", "ours", "o-"),
        ("MAX Llama, same bytes", "llama", "s--"),
        ("vLLM CPU", "vllm", "d-."),
    ):
        data = results.get(key)
        if data and "levels" in data:
            xs = [lv["concurrency"] for lv in data["levels"]]
            ys = [_median(lv["turns"]) for lv in data["levels"]]
            ax.plot(xs, ys, style, label=name)
    for encoding, data in (results.get("gguf") or {}).items():
        xs = [lv["concurrency"] for lv in data["levels"]]
        tps = [lv["tokens_per_second"] for lv in data["levels"]]
        ax.plot(xs, tps, "x-", label=f"ours, GGUF {encoding}")
    hf = results.get("transformers", {})
    if hf:
        xs = sorted(int(k) for k in hf)
        ys = [_median(hf[str(x)]["turns"]) for x in xs]
        ax.plot(xs, ys, "^:", label="transformers (batch)")
    ceil = results["ceilings"]
    ax.axhline(
        ceil["large_batch_tokens_per_second"],
        color="gray",
        linestyle="-.",
        label="compute ceiling (float32 GEMM)",
    )
    ax.axhline(
        ceil["one_stream_tokens_per_second"],
        color="gray",
        linestyle=":",
        label="one-stream bandwidth ceiling (float32)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams (transformers: batch size)")
    ax.set_ylabel("output tokens / s (all streams)")
    ax.set_title(
        f"{results['model']}, {results['machine']['cores']} CPU cores\n"
        "float32 unless marked GGUF; ceilings for float32"
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_line(results: dict[str, Any]) -> str:
    """When, how long and on what the run measured."""
    machine = results["machine"]
    when = (
        f"{results['started']} to {results['finished']} "
        f"({results['duration_minutes']:.0f} minutes), "
        if "started" in results
        else ""
    )
    return (
        f"Run: {when}{machine['cores']} cores, {machine['cpu']}, "
        f"{', '.join(machine.get('simd_flags', []))}; load average "
        f"{results['load_average']['start'][0]:.2f} at the start"
        + (
            f", {results['load_average']['end'][0]:.2f} at the end"
            if "end" in results["load_average"]
            else ""
        )
    )


def render(results: dict[str, Any]) -> str:
    """table.md's text, from results.json's content alone."""
    found = results.get("floors") or floors.evaluate(floor_rows(results))
    sections = [
        run_line(results),
        served_table(results),
        gguf_table(results),
        one_stream_table(results),
        xl_table(results),
        ctranslate2_turns.table(results),
        ablations.table(results["ablations"]) if "ablations" in results else "",
        floors.table(found, floors.bandwidth_errors(results)),
    ]
    return "\n\n".join(x for x in sections if x) + "\n"


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    results["floors"] = floors.evaluate(floor_rows(results))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    (out / "table.md").write_text(text)
    plot(results, out / "throughput.png")
    return text
