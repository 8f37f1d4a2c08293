"""Benchmark results: a JSON file, a markdown table and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def roofline(ceil: dict[str, float], streams: int) -> float:
    """n streams share each weight read, until compute runs out."""
    return min(
        streams * ceil["one_stream_tokens_per_second"],
        ceil["large_batch_tokens_per_second"],
    )


def table(results: dict[str, Any]) -> str:
    ours, llama = results["ours"], results.get("llama")
    hf = results.get("transformers", {})
    ceil = results["ceilings"]
    rows = [
        "| streams | ours tok/s | MAX Llama tok/s | ours / Llama | transformers tok/s "
        "(batch) | ours / transformers | ours / ceiling | ITL p50 / p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in ours["levels"]:
        n = level["concurrency"]
        peer = next(
            (x for x in (llama or {}).get("levels", []) if x["concurrency"] == n), None
        )
        hf_level = hf.get(str(n))
        ceiling = roofline(ceil, n)
        ours_tps = level["tokens_per_second"]
        peer_tps = peer["tokens_per_second"] if peer else None
        hf_tps = hf_level["tokens_per_second"] if hf_level else None
        rows.append(
            f"| {n} | {_fmt(ours_tps)} | {_fmt(peer_tps)} "
            f"| {_fmt(ours_tps / peer_tps if peer_tps else None, 2)} "
            f"| {_fmt(hf_tps)} | {_fmt(ours_tps / hf_tps if hf_tps else None, 2)} "
            f"| {_fmt(ours_tps / ceiling, 2)} "
            f"| {_fmt(level['itl_p50_ms'])} / {_fmt(level['itl_p99_ms'])} |"
        )
    lines = ["\n".join(rows), ""]
    for name, data in (("ours", ours), ("MAX Llama", llama)):
        if not data:
            continue
        ttft = ", ".join(
            f"{k}-token prompt {_fmt(v * 1000, 0)} ms"
            for k, v in data["ttft_seconds"].items()
        )
        start = ", ".join(
            f"{k} {_fmt(v)} s" for k, v in data["startup_seconds"].items()
        )
        lines.append(f"- {name}: time to first token {ttft}; server start {start}")
        for b, e in data.get("engine", {}).items():
            lines.append(
                f"  - engine alone (in-process decode, batch {b}): "
                f"{_fmt(e['tokens_per_second'])} tok/s, {_fmt(e['step_ms'], 2)} ms/step"
            )
    best_hf = max(
        (v["tokens_per_second"] for k, v in hf.items() if int(k) > 1), default=None
    )
    top = ours["levels"][-1]
    if best_hf:
        lines.append(
            f"- {top['concurrency']} streams vs best transformers batch: "
            f"{top['tokens_per_second'] / best_hf:.2f}x"
        )
    lines.append(
        f"- ceilings: one stream {_fmt(ceil['one_stream_tokens_per_second'])} tok/s "
        f"(read bandwidth {_fmt(results['machine']['read_bandwidth_gbs'])} GB/s), "
        f"large batch {_fmt(ceil['large_batch_tokens_per_second'])} tok/s "
        f"(float32 GEMM {_fmt(results['machine']['gemm_gflops'])} GFLOP/s)"
    )
    return "\n".join(lines)


def gguf_table(results: dict[str, Any]) -> str:
    """GGUF encodings next to float32, all measured in this run."""
    gguf = results.get("gguf") or {}
    if not gguf:
        return ""
    bandwidth = results["machine"]["read_bandwidth_gbs"] * 1e9
    kv = results["costs"]["kv_bytes_per_token"]
    f32 = {
        lv["concurrency"]: lv["tokens_per_second"] for lv in results["ours"]["levels"]
    }
    f32_engine = results["ours"].get("engine", {})
    many = max(int(n) for n in next(iter(gguf.values()))["engine"])
    rows = [
        f"| encoding | MB read / token | 1 stream tok/s | x float32 | of ceiling "
        f"| {many} streams tok/s | x float32 | engine batch 1 tok/s | x float32 "
        f"| engine batch {many} tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    f32_bytes = results["costs"]["weight_bytes_per_token"]
    rows.append(
        f"| float32 | {_fmt(f32_bytes / 1e6)} | {_fmt(f32.get(1))} | 1.00 "
        f"| {_fmt(f32[1] * (f32_bytes + kv) / bandwidth, 2)} | {_fmt(f32.get(many))} "
        f"| 1.00 | {_fmt(f32_engine.get('1', {}).get('tokens_per_second'))} | 1.00 "
        f"| {_fmt(f32_engine.get(str(many), {}).get('tokens_per_second'))} |"
    )
    for encoding, data in gguf.items():
        tps = {lv["concurrency"]: lv["tokens_per_second"] for lv in data["levels"]}
        eng = {int(b): e["tokens_per_second"] for b, e in data["engine"].items()}
        f32_eng1 = f32_engine.get("1", {}).get("tokens_per_second")
        per_token = data["weight_bytes_per_token"]
        rows.append(
            f"| {encoding} | {_fmt(per_token / 1e6)} | {_fmt(tps[1])} "
            f"| {_fmt(tps[1] / f32[1], 2)} "
            f"| {_fmt(tps[1] * (per_token + kv) / bandwidth, 2)} "
            f"| {_fmt(tps[many])} | {_fmt(tps[many] / f32[many], 2)} "
            f"| {_fmt(eng[1])} | {_fmt(eng[1] / f32_eng1 if f32_eng1 else None, 2)} "
            f"| {_fmt(eng[many])} |"
        )
    return "\n".join(rows)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, key, style in (
        ("ours (GPT-2 on MAX)", "ours", "o-"),
        ("MAX Llama, same bytes", "llama", "s--"),
    ):
        data = results.get(key)
        if data:
            xs = [lv["concurrency"] for lv in data["levels"]]
            ax.plot(
                xs,
                [lv["tokens_per_second"] for lv in data["levels"]],
                style,
                label=name,
            )
    for encoding, data in (results.get("gguf") or {}).items():
        xs = [lv["concurrency"] for lv in data["levels"]]
        tps = [lv["tokens_per_second"] for lv in data["levels"]]
        ax.plot(xs, tps, "x-", label=f"ours, GGUF {encoding}")
    hf = results.get("transformers", {})
    if hf:
        xs = sorted(int(k) for k in hf)
        ax.plot(
            xs,
            [hf[str(x)]["tokens_per_second"] for x in xs],
            "^:",
            label="transformers (batch)",
        )
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


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    if results.get("gguf"):
        text += "\n\n" + gguf_table(results)
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "throughput.png")
    return text
