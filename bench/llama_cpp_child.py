"""llama.cpp in process on GGUF files: run by the llama.cpp peer's own python.

Imports nothing of this project (its venv has only llama-cpp-python). Reads
a JSON job on stdin and writes one JSON result per line, so a file that
fails to load costs only its own line. Mirrors `bench/engine.py`: one
stream decodes after a prompt, and the median step is reported; then a
prompt of `prefill_tokens` is evaluated from an empty cache.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def measure(path: str, job: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    threads = int(job["threads"])
    llm = Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=int(job["n_ctx"]),
        n_batch=int(job["prefill_tokens"]),
        verbose=False,
    )
    prompt_len, steps, warmup = job["prompt_len"], job["steps"], job["warmup"]
    llm.reset()
    llm.eval(list(range(100, 100 + prompt_len)))
    times = []
    for step in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        llm.eval([token])
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)
    step_s = statistics.median(times)
    prefill = []
    n = int(job["prefill_tokens"])
    for repeat in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(list(range(100 + repeat, 100 + repeat + n)))
        prefill.append(time.perf_counter() - start)
    return {
        "step_ms": step_s * 1000,
        "tokens_per_second": 1 / step_s,
        "prefill_tokens": n,
        "prefill_seconds": statistics.median(prefill),
    }


def main() -> None:
    job = json.load(sys.stdin)
    import llama_cpp

    for label, path in job["files"].items():
        try:
            result = {"version": llama_cpp.__version__, **measure(path, job)}
        except Exception as e:  # reported per file, never fatal
            result = {"skipped": f"{type(e).__name__}: {e}"}
        print(json.dumps({"label": label, **result}), flush=True)


if __name__ == "__main__":
    main()
