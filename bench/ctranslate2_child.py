"""CTranslate2 in process: run by the CTranslate2 peer's own python.

Imports nothing of this project (its venv has ctranslate2, transformers and
torch). Reads one JSON job on stdin and prints one JSON line: a conversion,
a measurement (one `generate_batch` per batch size, the way `bench/load.py`
counts ours served: new tokens of the whole batch over the call's wall
time, prefill included), or a greedy check against transformers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def convert(job: dict) -> dict:
    """`ct2-transformers-converter` with its own arguments. Our checkpoints
    may pad `vocab_size` past the tokenizer (50304 for 50257) and the GPT-2
    loader, unlike CTranslate2's others, does not pad the vocabulary to
    match: it is padded here with `<extra_id_N>` as those loaders do."""
    from ctranslate2.converters import transformers as ct2t

    class PaddedGPT2Loader(ct2t.GPT2Loader):
        def get_vocabulary(self, model: Any, tokenizer: Any) -> list[str]:
            tokens = super().get_vocabulary(model, tokenizer)
            extra = model.config.vocab_size - len(tokens)
            return tokens + [f"<extra_id_{i}>" for i in range(max(extra, 0))]

    ct2t._MODEL_LOADERS["GPT2Config"] = PaddedGPT2Loader()
    sys.argv = ["ct2-transformers-converter", *job["args"]]
    ct2t.main()
    return {"model_dir": job["args"][job["args"].index("--output_dir") + 1]}


def vocabulary(model_dir: str) -> list[str]:
    path = Path(model_dir)
    if (path / "vocabulary.json").exists():
        return json.loads((path / "vocabulary.json").read_text())
    return (path / "vocabulary.txt").read_text().split("\n")


def generator(job: dict, compute_type: str) -> Any:
    import ctranslate2

    return ctranslate2.Generator(
        job["model_dir"],
        device="cpu",
        compute_type=compute_type,
        intra_threads=int(job["threads"]),
        inter_threads=1,
    )


def generate(gen: Any, tokens: list[list[str]], new_tokens: int) -> list[list[int]]:
    """Greedy, exactly `new_tokens` new ids per prompt: `min_length` masks
    the end token until then, and without the prompt in the result
    `max_length` counts new tokens only. Fails when the count differs."""
    results = gen.generate_batch(
        tokens,
        max_length=new_tokens,
        min_length=new_tokens,
        include_prompt_in_result=False,
        beam_size=1,
        sampling_topk=1,
    )
    ids = [r.sequences_ids[0] for r in results]
    counts = sorted({len(x) for x in ids})
    if counts != [new_tokens]:
        raise RuntimeError(f"asked for {new_tokens} new tokens, got {counts}")
    return ids


def measure(job: dict) -> dict:
    import ctranslate2

    gen = generator(job, job["compute_type"])
    vocab = vocabulary(job["model_dir"])
    tokens = [[vocab[i] for i in prompt] for prompt in job["prompts"]]
    generate(gen, tokens[:2], 4)  # warm-up
    rows: dict = {"version": ctranslate2.__version__}
    for batch in job["batches"]:
        if batch > len(tokens):
            raise ValueError(f"batch {batch} needs {batch} prompts, got {len(tokens)}")
        start = time.perf_counter()
        ids = generate(gen, tokens[:batch], int(job["max_tokens"]))
        wall = time.perf_counter() - start
        output = sum(len(x) for x in ids)
        rows[str(batch)] = {
            "tokens_per_second": output / wall,
            "wall_seconds": wall,
            "output_tokens": output,
        }
    return rows


IGNORED_BY_CONVERTER = {
    "scale_attn_by_inverse_layer_idx": False,
    "layer_norm_epsilon": 1e-5,
}
"""GPT-2 config fields CTranslate2 4.8.5's converter drops, with the value it
assumes (measured: the variant preset's logits differ by 0.1 in 2.4 with
both set, 0.002 with the epsilon alone, 1.5e-6 with neither)."""


def check(job: dict) -> dict:
    """Float32 greedy ids of CTranslate2 and of transformers, compared."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(int(job["threads"]))
    new_tokens = int(job["max_tokens"])
    vocab = vocabulary(job["model_dir"])
    ours = generate(
        generator(job, "float32"),
        [[vocab[i] for i in prompt] for prompt in job["prompts"]],
        new_tokens,
    )
    model = GPT2LMHeadModel.from_pretrained(job["checkpoint"]).eval()
    theirs = []
    with torch.no_grad():
        for prompt in job["prompts"]:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )
            theirs.append(out[0, len(prompt) :].tolist())
    agree = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x))
        for x, y in zip(ours, theirs, strict=True)
    ]
    config = json.loads((Path(job["checkpoint"]) / "config.json").read_text())
    ignored = {
        k: config[k] for k, v in IGNORED_BY_CONVERTER.items() if config.get(k, v) != v
    }
    return {
        "greedy_matches_transformers": ours == theirs,
        "config_the_converter_ignores": ignored,
        "prompts": len(ours),
        "new_tokens": new_tokens,
        "tokens_agreeing_before_first_difference": agree,
    }


def main() -> None:
    job = json.load(sys.stdin)
    run = {"convert": convert, "measure": measure, "check": check}[job["mode"]]
    print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()
