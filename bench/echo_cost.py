"""What `--enable-echo` costs ordinary requests, in process.

With echo enabled the graph runs the LM head on every prompt token (the
prompt's log-probabilities), not only on each sequence's last one. This
loads both graphs side by side and times the same steps on each,
alternating between them so that load from other processes hits both
alike: a prefill of one prompt, and decode steps of a batch
(`python -m bench.echo_cost CHECKPOINT`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from gpt2_max.stepper import Stepper, stepper

GRAPHS = {"default": False, "enable_echo": True}


def echo_cost(
    checkpoint: str | Path,
    *,
    prompt_len: int = 512,
    batch: int = 32,
    repeats: int = 7,
    decode_steps: int = 24,
) -> dict[str, dict[str, float]]:
    """Median prefill time of a `prompt_len` prompt (batch 1) and median
    decode-step time of `batch` sequences, per graph."""
    prompts = [list(range(100 + i, 132 + i)) for i in range(batch)]
    length = max(prompt_len, 32 + decode_steps) + 1
    decodes: dict[str, list[float]] = {name: [] for name in GRAPHS}
    prefills: dict[str, list[float]] = {name: [] for name in GRAPHS}
    with ExitStack() as stack:
        runs = {
            name: stack.enter_context(
                stepper(checkpoint, prompts, length, enable_echo=echo)
            )
            for name, echo in GRAPHS.items()
        }
        for step in range(decode_steps):
            for name, run in runs.items():
                logits, seconds = run.step()
                if step > 2:  # step 0 is the prefill
                    decodes[name].append(seconds)
                run.feed(logits.argmax(-1))
        for r in range(repeats + 1):
            prompt = [list(range(200 + r, 200 + r + prompt_len))]
            for name, run in runs.items():
                run.release()
                engine = SimpleNamespace(_pipeline_model=run.model, kv_manager=run.kv)
                one = Stepper(engine, prompt, length)
                _, seconds = one.step()
                one.release()
                if r:  # the first one also warms the caches
                    prefills[name].append(seconds)
    return {
        name: {
            "prefill_ms": statistics.median(prefills[name]) * 1000,
            "decode_step_ms": statistics.median(decodes[name]) * 1000,
        }
        for name in GRAPHS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    result = echo_cost(args.checkpoint, prompt_len=args.prompt_len, batch=args.batch)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
