"""The `max serve` steps of `gpu/check`: the CPU tests' serve battery, and
the speed of the default (bfloat16 on a GPU) server."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from common import Verdict, checkpoint_dir, log_softmax_rows, scratch, torch_device

from gpt2_max.server import MaxServe

TEXT = (
    "The harbour was quiet in the early morning, and the fishing boats "
    "rocked gently against the pier while gulls argued over scraps. An old "
    "man sat on an upturned crate, mending a net with quick, practised "
    "fingers, and told anyone who would listen about the winter storm of "
    "his childhood, when the sea came over the wall and into the square. "
)
LOGPROB_ATOL = 1e-3
START_LIMIT = 600.0
# HBM copy, bytes read plus written, measured on an H200 of this workplace
# (device KINDS.md, 2026-10-28); used only when the env step measured none.
H200_COPY_GBS = 4300.0


def serving(checkpoint: Path, flags: list[str], log_name: str) -> MaxServe:
    """A `max serve` whose process group `gpu/check` stops even if this
    step is killed: its pid lands in scratch/servers as soon as it exists."""
    server = MaxServe(checkpoint, flags, log_path=scratch() / log_name)
    servers = scratch() / "servers"

    def note_pid() -> None:
        while server.process is None:
            time.sleep(0.05)
        (servers / str(server.process.pid)).touch()

    threading.Thread(target=note_pid, daemon=True).start()
    return server


def post(server: MaxServe, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/{path}", json={"model": server.model, **body}, timeout=120
    )


def complete(server: MaxServe, prompt: Any, n: int, **extra: Any) -> dict[str, Any]:
    r = post(
        server,
        "completions",
        {"prompt": prompt, "max_tokens": n, "temperature": 0, **extra},
    )
    r.raise_for_status()
    return r.json()


def run_checks(
    checks: dict[str, Callable[[], Any]],
) -> tuple[dict[str, Any], list[str]]:
    """Each check on its own: what it returned, or why it failed."""
    results, failed = {}, []
    for name, check in checks.items():
        try:
            results[name] = {"ok": True, "detail": check()}
        except Exception as error:
            results[name] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}"[:800],
            }
            failed.append(name)
    return results, failed


def step_serve_battery(devices: str, shape: str) -> Verdict:
    """float32 `max serve` with echo: greedy and log-probabilities equal
    transformers float32 on the same device, chat, concurrency, bad input."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    ckpt = checkpoint_dir(shape)
    device = torch_device(devices)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    n_positions = json.loads((ckpt / "config.json").read_text())["n_positions"]
    model = (
        GPT2LMHeadModel.from_pretrained(str(ckpt), dtype=torch.float32)
        .to(device)
        .eval()
    )
    prompts = [TEXT[i * 37 : i * 37 + 60] for i in range(8)]

    def oracle_ids(prompt: str, n: int) -> list[int]:
        ids = torch.tensor([tokenizer(prompt).input_ids], device=device)
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=n, do_sample=False, pad_token_id=50256
            )
        return out[0, ids.shape[1] :].tolist()

    server = serving(ckpt, ["--devices", devices, "--quantization-encoding", "float32",
                            "--enable-echo"], f"serve-battery-{shape}.log")  # fmt: skip

    def greedy() -> str:
        got = complete(server, prompts[0], 12)["choices"][0]["text"]
        want = tokenizer.decode(oracle_ids(prompts[0], 12))
        assert got == want.rstrip("\ufffd"), f"{got!r} != {want!r}"
        return got

    def chat() -> str:
        hello = [{"role": "user", "content": "Hello!"}]
        r = post(server, "chat/completions", {"messages": hello, "max_tokens": 8})
        r.raise_for_status()
        body = r.json()
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert 0 < body["usage"]["completion_tokens"] <= 8, body["usage"]
        return body["choices"][0]["message"]["content"]

    def concurrency() -> int:
        solo = [complete(server, p, 10)["choices"][0]["text"] for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(lambda p: complete(server, p, 10), prompts))
        assert [t["choices"][0]["text"] for t in together] == solo
        return len(prompts)

    def bad_input() -> dict[str, int]:
        too_long = tokenizer(TEXT * 40).input_ids[: n_positions + 76]
        cases = {
            "prompt past the window": {"prompt": too_long, "max_tokens": 4},
            "max_tokens of a wrong type": {"prompt": "hi", "max_tokens": "ten"},
            "unknown field": {"prompt": "hi", "frobnicate": 1},
        }
        codes = {
            k: post(server, "completions", v).status_code for k, v in cases.items()
        }
        assert all(400 <= c < 500 for c in codes.values()), codes
        greedy()  # and the server still serves
        return codes

    def logprobs() -> float:
        ids = tokenizer(prompts[1]).input_ids
        body = complete(server, prompts[1], 6, logprobs=3)
        got = body["choices"][0]["logprobs"]["token_logprobs"]
        generated = oracle_ids(prompts[1], 6)
        lsm = log_softmax_rows(ckpt, ids + generated, device)
        want = [float(lsm[len(ids) - 1 + k, t]) for k, t in enumerate(generated)]
        worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
        assert worst <= LOGPROB_ATOL, (got, want)
        return worst

    def echo() -> float:
        ids = tokenizer(prompts[2]).input_ids
        body = complete(server, prompts[2], 2, echo=True, logprobs=1)
        choice = body["choices"][0]
        assert choice["text"].startswith(prompts[2]), choice["text"]
        got = choice["logprobs"]["token_logprobs"]
        assert len(got) == len(ids) + 2 and got[0] is None, got
        lsm = log_softmax_rows(ckpt, ids, device)
        worst = max(abs(got[k] - float(lsm[k - 1, ids[k]])) for k in range(1, len(ids)))
        assert worst <= LOGPROB_ATOL, worst
        return worst

    try:
        server.start(START_LIMIT)
        startup = server.startup_seconds
        results, failed = run_checks(
            {"greedy_equals_transformers": greedy, "chat": chat,
             "concurrency_equals_solo": concurrency, "bad_input_4xx": bad_input,
             "logprobs_equal_transformers": logprobs, "echo_prompt_logprobs": echo}
        )  # fmt: skip
    finally:
        server.stop()
    result = {"startup_seconds": startup, "checks": results}
    return Verdict("fail" if failed else "pass", result, ", ".join(failed))


def prompt_ids(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """`count` different prompts of `length` tokens (no shared prefix)."""
    ids = tokenizer(TEXT * 40).input_ids
    return [ids[i : i + length] for i in range(count)]


def weight_bytes_per_token(checkpoint: Path, bytes_per_weight: int) -> int:
    """Bytes one decode step must read: every weight but the position table
    (one row of it), at the serving dtype; the KV cache is left out."""
    from safetensors import safe_open

    count = 0
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(str(path), "np") as f:
            for name in f.keys():
                if name.endswith(("attn.bias", "attn.masked_bias")) or "wpe" in name:
                    continue
                shape = f.get_slice(name).get_shape()
                count += int(__import__("math").prod(shape))
    return count * bytes_per_weight


def step_serve_speed(devices: str, shape: str) -> Verdict:
    """The default server (`--devices` only: bfloat16 on a GPU): can it give
    logprobs, and its throughput at 1, 32 and 256 streams; one stream's
    time to first token and decode rate against the bandwidth ceiling."""
    from transformers import AutoTokenizer

    from bench.load import run_level

    ckpt = checkpoint_dir(shape)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    levels = [(1, 128), (32, 64), (256, 64)] if devices == "gpu" else [(1, 16), (4, 16)]
    server = serving(ckpt, ["--devices", devices], f"serve-speed-{shape}.log")
    rows = []
    try:
        server.start(START_LIMIT)
        probe = post(
            server, "completions", {"prompt": "Hello", "max_tokens": 2, "logprobs": 1}
        )
        logprobs = {"status": probe.status_code, "body": probe.text[:400]}
        complete(server, prompt_ids(tokenizer, 1, 64)[0], 8)  # warm
        for streams, new in levels:
            level = run_level(
                server.url, server.model, prompt_ids(tokenizer, streams, 64), new
            )
            ttft = statistics.median(s.ttft for s in level.streams)
            row = {
                "streams": streams,
                "new_tokens": new,
                "tokens_per_second": level.tokens_per_second,
                "median_ttft_s": ttft,
            }
            if streams == 1:
                s = level.streams[0]
                row["decode_tokens_per_second"] = (len(s.chunk_times) - 1) / (
                    s.chunk_times[-1] - s.chunk_times[0]
                )
            rows.append(row)
    finally:
        server.stop()
    result: dict[str, Any] = {"startup_seconds": server.startup_seconds,
                              "logprobs_probe": logprobs, "levels": rows}  # fmt: skip
    if devices == "gpu":
        copy = scratch() / "copy_gbs.json"
        gbs = json.loads(copy.read_text()) if copy.is_file() else H200_COPY_GBS
        per_token = weight_bytes_per_token(ckpt, 2)
        ceiling = gbs * 1e9 / per_token
        one = rows[0]["decode_tokens_per_second"]
        result["one_stream_ceiling"] = {
            "copy_gbs": gbs, "bytes_per_token": per_token,
            "ceiling_tokens_per_second": ceiling, "share": one / ceiling,
        }  # fmt: skip
    return Verdict("pass", result)
