"""What `--enable-echo` costs ordinary requests, in process.

With echo enabled the graph runs the LM head on every prompt token (the
prompt's log-probabilities), not only on each sequence's last one. This
times the same steps on both graphs: a prefill of one prompt, and decode
steps of a batch (`python -m bench.echo_cost CHECKPOINT`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

from gpt2_max.stepper import Stepper, stepper


def step_times(
    checkpoint: str | Path,
    *,
    enable_echo: bool,
    prompt_len: int,
    batch: int,
    repeats: int,
    decode_steps: int = 20,
) -> dict[str, float]:
    """Median prefill time of a `prompt_len` prompt (batch 1), and median
    decode-step time of `batch` sequences, on one loaded model."""
    prompts = [list(range(100 + i, 132 + i)) for i in range(batch)]
    length = max(prompt_len, 32 + decode_steps) + 1
    decodes, prefills = [], []
    with stepper(checkpoint, prompts, length, enable_echo=enable_echo) as many:
        for step in range(decode_steps):
            logits, seconds = many.step()
            if step > 2:  # step 0 is the prefill
                decodes.append(seconds)
            many.feed(logits.argmax(-1))
        many.release()
        engine = SimpleNamespace(_pipeline_model=many.model, kv_manager=many.kv)
        for r in range(repeats + 1):
            one = Stepper(engine, [list(range(200 + r, 200 + r + prompt_len))], length)
            _, seconds = one.step()
            one.release()
            if r:  # the first one also warms the caches
                prefills.append(seconds)
    return {
        "prefill_ms": statistics.median(prefills) * 1000,
        "decode_step_ms": statistics.median(decodes) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {
        name: step_times(
            args.checkpoint,
            enable_echo=echo,
            prompt_len=args.prompt_len,
            batch=args.batch,
            repeats=args.repeats,
        )
        for name, echo in (("default", False), ("enable_echo", True))
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
