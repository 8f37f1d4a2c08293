"""Benchmark results: a JSON file, a markdown table and a PNG plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from . import q8_0_turns


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


def _level_tps(side: dict[str, Any] | None, n: int) -> float | None:
    for level in (side or {}).get("levels", []):
        if level["concurrency"] == n:
            return float(level["tokens_per_second"])
    return None


def _engine_tps(side: dict[str, Any] | None, batch: int) -> float | None:
    engine = (side or {}).get("engine", {}).get(str(batch))
    return float(engine["tokens_per_second"]) if engine else None


def _peer_tps(row: dict[str, Any] | None) -> float | None:
    return None if not row or "skipped" in row else float(row["tokens_per_second"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _bandwidth_share_in_turns(results: dict[str, Any]) -> float | None:
    """The median over the one-stream turns of our float32 engine's bytes
    per second over the bandwidth probed just before it."""
    rounds = results.get("one_stream_rounds") or {}
    if "bandwidth_gbs" not in rounds:
        return None
    costs = results["costs"]
    per_token = costs["weight_bytes_per_token"] + costs["kv_bytes_per_token"]
    return statistics.median(
        tps * per_token / (gbs * 1e9)
        for tps, gbs in zip(rounds["ours"], rounds["bandwidth_gbs"], strict=True)
    )


def floors(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's floors, each as measured in this run (None: not measured)."""
    ours, gguf = results["ours"], results.get("gguf") or {}
    llama_cpp, vllm = results.get("llama.cpp") or {}, results.get("vllm")
    bandwidth = results["machine"]["read_bandwidth_gbs"] * 1e9
    ceil = results["ceilings"]
    many = max(results["workload"]["levels"])
    q4_k = gguf.get("q4_k")
    q4_k_fraction = (
        _engine_tps(q4_k, 1) * q4_k["weight_bytes_per_token"] / bandwidth
        if q4_k and _engine_tps(q4_k, 1)
        else None
    )
    xl = results.get("xl") or {}
    rounds = results.get("one_stream_rounds") or {}
    rows = [
        (
            "engine, 1 stream, float32 / llama.cpp in process",
            rounds.get("ratio_of_medians")
            or _ratio(_engine_tps(ours, 1), _peer_tps(llama_cpp.get("f32"))),
            0.95,
        ),
        (
            "engine, 1 stream, float32 / read-bandwidth ceiling",
            _bandwidth_share_in_turns(results)
            or _ratio(_engine_tps(ours, 1), ceil["one_stream_tokens_per_second"]),
            0.85,
        ),
        (
            "max serve, 1 stream, float32 / llama.cpp in process",
            rounds.get("served_ratio_of_medians")
            or _ratio(_level_tps(ours, 1), _peer_tps(llama_cpp.get("f32"))),
            0.85,
        ),
        (
            f"engine, {many} streams / GEMM ceiling",
            _ratio(_engine_tps(ours, many), ceil["large_batch_tokens_per_second"]),
            0.60,
        ),
        (
            f"max serve, {many} streams / vLLM CPU served",
            ((vllm or {}).get("many_stream_rounds") or {}).get("ratio_of_medians")
            or _ratio(_level_tps(ours, many), _level_tps(vllm, many)),
            1.5,
        ),
        ("q4_k engine, 1 stream: matmul bytes read / bandwidth", q4_k_fraction, 0.80),
    ]
    for encoding in ("f32", "q4_k"):
        rows.append(
            (
                f"GPT-2 XL shape, {encoding}, engine 1 stream / llama.cpp",
                _ratio(
                    _peer_tps((xl.get("ours") or {}).get(encoding)),
                    _peer_tps((xl.get("llama.cpp") or {}).get(encoding)),
                ),
                0.9,
            )
        )
    rows.extend(q8_0_turns.floor_rows(results))
    return [
        {
            "floor": name,
            "measured": value,
            "required": required,
            "met": None if value is None else value >= required,
        }
        for name, value, required in rows
    ]


def floors_table(results: dict[str, Any]) -> str:
    rows = ["| floor | measured | required | met |", "| --- | ---: | ---: | --- |"]
    for row in floors(results):
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        rows.append(
            f"| {row['floor']} | {_fmt(row['measured'], 2)} "
            f"| {_fmt(row['required'], 2)} | {met} |"
        )
    return "\n".join(rows)


def vllm_table(results: dict[str, Any]) -> str:
    vllm = results.get("vllm")
    if not vllm:
        return ""
    if "skipped" in vllm:
        return f"- vLLM CPU: skipped ({vllm['skipped'][:300]})"
    rows = [
        "| streams | ours served tok/s | vLLM CPU served tok/s | ours / vLLM |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for level in results["ours"]["levels"]:
        n = level["concurrency"]
        theirs = _level_tps(vllm, n)
        rows.append(
            f"| {n} | {_fmt(level['tokens_per_second'])} | {_fmt(theirs)} "
            f"| {_fmt(_ratio(level['tokens_per_second'], theirs), 2)} |"
        )
    ttft = ", ".join(
        f"{k}-token prompt {_fmt(v * 1000, 0)} ms"
        for k, v in vllm["ttft_seconds"].items()
    )
    rows.append(f"\n- vLLM CPU: time to first token {ttft}")
    turns = vllm.get("many_stream_rounds")
    if turns:
        rows.append(
            f"- {turns['streams']} streams in turns, both servers up: ours "
            f"{', '.join(_fmt(v) for v in turns['ours'])} tok/s; vLLM CPU "
            f"{', '.join(_fmt(v) for v in turns['vllm'])}; ratio of the "
            f"medians {_fmt(turns['ratio_of_medians'], 2)}"
        )
    return "\n".join(rows)


def llama_cpp_table(results: dict[str, Any]) -> str:
    """One stream in process, ours (engine alone) and llama.cpp, same files."""
    llama_cpp = results.get("llama.cpp")
    if not llama_cpp:
        return ""
    rows = [
        "| file | ours engine 1 stream tok/s | llama.cpp 1 stream tok/s "
        "| ours / llama.cpp | ours served 1 stream / llama.cpp "
        "| prefill ours / llama.cpp s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    gguf = results.get("gguf") or {}
    for label, theirs in llama_cpp.items():
        side = results["ours"] if label == "f32" else gguf.get(label)
        ours_tps, their_tps = _engine_tps(side, 1), _peer_tps(theirs)
        if theirs.get("skipped"):
            why = theirs["skipped"][:120]
            rows.append(f"| {label} | {_fmt(ours_tps)} | skipped: {why} | | | |")
            continue
        ours_prefill = (
            (side or {}).get("engine", {}).get("1", {}).get("prefill_seconds")
        )
        rows.append(
            f"| {label} | {_fmt(ours_tps)} | {_fmt(their_tps)} "
            f"| {_fmt(_ratio(ours_tps, their_tps), 2)} "
            f"| {_fmt(_ratio(_level_tps(side, 1), their_tps), 2)} "
            f"| {_fmt(ours_prefill, 3)} / {_fmt(theirs['prefill_seconds'], 3)} "
            f"({theirs['prefill_tokens']} tokens) |"
        )
    rounds = results.get("one_stream_rounds") or {}
    if "ours" in rounds:
        rows.append(
            f"\n- float32, one stream, in turns: ours "
            f"{', '.join(_fmt(v) for v in rounds['ours'])} tok/s; llama.cpp "
            f"{', '.join(_fmt(v) for v in rounds['llama.cpp'])}; ratio of the "
            f"medians {_fmt(rounds['ratio_of_medians'], 2)}"
        )
        if "served" in rounds:
            rows.append(
                f"- `max serve`, one stream, in the same turns (the server up "
                f"throughout): {', '.join(_fmt(v) for v in rounds['served'])} "
                f"tok/s; ratio of the medians to llama.cpp "
                f"{_fmt(rounds['served_ratio_of_medians'], 2)}"
            )
        if "bandwidth_gbs" in rounds:
            rows.append(
                f"- bandwidth probed before each turn of ours: "
                f"{', '.join(_fmt(v) for v in rounds['bandwidth_gbs'])} GB/s; "
                f"median share of it read by ours "
                f"{_fmt(_bandwidth_share_in_turns(results), 2)}"
            )
    elif rounds:
        rows.append(f"\n- float32 turns: skipped ({rounds['skipped'][:200]})")
    return "\n".join(rows)


def xl_table(results: dict[str, Any]) -> str:
    xl = results.get("xl")
    if not xl:
        return ""
    bandwidth = results["machine"]["read_bandwidth_gbs"] * 1e9
    rows = [
        "| GPT-2 XL shape, 1 stream | MB read / token | ours engine tok/s "
        "| of bandwidth | llama.cpp tok/s | ours / llama.cpp |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for encoding, per_token in xl["weight_bytes_per_token"].items():
        ours = _peer_tps(xl["ours"].get(encoding))
        theirs_row = (xl.get("llama.cpp") or {}).get(encoding)
        theirs = _peer_tps(theirs_row)
        rows.append(
            f"| {encoding} | {_fmt(per_token / 1e6)} | {_fmt(ours, 2)} "
            f"| {_fmt(_ratio(ours * per_token if ours else None, bandwidth), 2)} "
            f"| {_fmt(theirs, 2) if theirs_row else 'not run'} "
            f"| {_fmt(_ratio(ours, theirs), 2)} |"
        )
    turns = [
        f"{encoding} ours {', '.join(_fmt(v, 2) for v in mine['turns'])}"
        + (
            f", llama.cpp {', '.join(_fmt(v, 2) for v in other['turns'])}"
            if "turns" in other
            else ""
        )
        for encoding, mine in xl["ours"].items()
        if "turns" in mine
        for other in [(xl.get("llama.cpp") or {}).get(encoding) or {}]
    ]
    if turns:
        rows.append(f"\n- tok/s in turns (medians above): {'; '.join(turns)}")
    return "\n".join(rows)


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
    results["floors"] = floors(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sections = [
        table(results),
        gguf_table(results),
        vllm_table(results),
        llama_cpp_table(results),
        q8_0_turns.table(results),
        xl_table(results),
        floors_table(results),
    ]
    text = "\n\n".join(x for x in sections if x)
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "throughput.png")
    return text
