"""`gpt2-max verify`: does this GPT-2 checkpoint serve correctly on MAX?

Two checks, in the order a bring-up needs them:
1. the weight mapping: every checkpoint tensor, what it becomes in the MAX
   graph, and anything missing, unexpected or misshaped;
2. numerical parity: the same token ids through MAX (this architecture,
   ragged batch, paged KV cache) and through `transformers`, greedy, with
   the relative logit error of the prefill and every decode step and the
   first token where the two part.
Exit status 0 is PASS, 1 is FAIL, 2 is a checkpoint that cannot be read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_lmhead_model.model_config import CheckpointError, validate_hf_config
from gpt2_lmhead_model.weight_adapters import MappedTensor, map_weights

from .parity import (
    FLOAT32_TOLERANCE,
    ParityReport,
    compare,
    max_greedy_decode,
    transformers_greedy_decode,
)

PASS, FAIL, UNREADABLE = 0, 1, 2

DEFAULT_PROMPTS = [
    "Hello, my name is",
    "The harbour was quiet in the early morning, and the fishing boats rocked "
    "gently against the pier while gulls argued over scraps.",
]

Print = Callable[[str], None]


@dataclass
class Verdict:
    status: int
    weights: list[MappedTensor]
    parity: ParityReport | None = None


def resolve_checkpoint(model_path: str) -> Path:
    """A local directory, or a hub repo id downloaded (config, tokenizer,
    safetensors) when the hub can be reached."""
    local = Path(model_path)
    if local.is_dir():
        return local
    if local.exists() or model_path.startswith((".", "/")):
        raise CheckpointError(f"{model_path} is not a checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                model_path,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
            )
        )
    except Exception as e:
        raise CheckpointError(
            f"{model_path} is not a local directory and could not be fetched "
            f"from the Hugging Face hub ({type(e).__name__}: {e})"
        ) from e


def read_config(checkpoint: Path) -> Any:
    from transformers import AutoConfig

    if not (checkpoint / "config.json").is_file():
        raise CheckpointError(f"{checkpoint} has no config.json")
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except Exception as e:
        raise CheckpointError(f"cannot read {checkpoint}/config.json: {e}") from e
    validate_hf_config(config)
    return config


def stored_tensors(checkpoint: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of the checkpoint's tensors (headers only)."""
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{checkpoint} has no .safetensors weights")
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in files:
        try:
            with safe_open(str(path), "np") as f:
                for name in f.keys():
                    view = f.get_slice(name)
                    tensors[name] = (tuple(view.get_shape()), view.get_dtype())
        except Exception as e:
            raise CheckpointError(f"cannot read {path.name}: {e}") from e
    return tensors


def runs_as(
    rows: Sequence[MappedTensor], dtypes: dict[str, str], n_layer: int, devices: str
) -> dict[str, str]:
    """Graph matrix weight -> the format `routing` gives it in a float32 run
    on `devices` (what `GPT2Config.finalize` decides once loaded)."""
    from max.dtype import DType
    from max.graph import DeviceRef

    from gpt2_lmhead_model.routing import HEAD, choose_format, matrix_names

    cpu = devices.split(",")[0].strip().startswith("cpu")
    device = DeviceRef.CPU() if cpu else DeviceRef.GPU()
    widths = {"F32": DType.float32, "F16": DType.float16, "BF16": DType.bfloat16}
    matrices = set(matrix_names(n_layer))
    out = {}
    for row in rows:
        matrix = (row.target or "").removesuffix(".weight")
        if row.problem or matrix not in matrices:
            continue
        stored = widths.get(dtypes.get(row.source, ""), DType.float32)
        fmt = choose_format(stored, None, device, DType.float32, matrix == HEAD)
        out[matrix + ".weight"] = fmt.label
    return out


def weight_table(
    rows: Sequence[MappedTensor],
    dtypes: dict[str, str],
    formats: dict[str, str] | None = None,
) -> str:
    header = ("checkpoint tensor", "shape", "dtype", "in MAX", "MAX shape", "how")
    formats = formats or {}
    lines = [(*header, "runs as")]
    for row in rows:
        lines.append(
            (
                row.source,
                _dims(row.source_shape),
                dtypes.get(row.source, ""),
                row.target or "-",
                _dims(row.target_shape),
                row.action.upper()
                if row.problem
                else row.action + (f" ({row.note})" if row.note else ""),
                formats.get(row.target or "", ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) + 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _dims(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def parity_table(report: ParityReport, decode: Callable[[int], str]) -> str:
    lines = []
    for i, p in enumerate(report.prompts):
        worst = max(p.rel_errors)
        where = p.rel_errors.index(worst)
        line = (
            f"prompt {i + 1} ({p.prompt_len} tokens): {len(p.rel_errors)} steps, "
            f"prefill rel. error {p.rel_errors[0]:.2e}, worst {worst:.2e} "
            f"(step {where})"
        )
        step = p.first_divergence
        if step is None:
            line += f", greedy tokens identical for {len(p.max_tokens)} steps"
        else:
            a, b = p.max_tokens[step], p.hf_tokens[step]
            line += (
                f", FIRST DIFFERING TOKEN at step {step}: MAX {a} {decode(a)!r} "
                f"vs transformers {b} {decode(b)!r}"
            )
        lines.append(line)
    return "\n".join(lines)


class _Ticker:
    """Prints elapsed time while a long stage (a cold compile) runs."""

    def __init__(self, say: Print, what: str, every: float = 30.0) -> None:
        self.say, self.what, self.every = say, what, every
        self.done = threading.Event()
        self.start = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self.say(f"  ... {self.what}, {time.monotonic() - self.start:.0f}s")

    def __enter__(self) -> _Ticker:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()


def verify(
    model_path: str,
    *,
    devices: str = "cpu",
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    decode_steps: int = 32,
    tolerance: float = FLOAT32_TOLERANCE,
    architecture: object | None = None,
    say: Print = print,
) -> Verdict:
    """Runs both checks and reports as it goes; see the module docstring."""
    started = time.monotonic()

    def stage(message: str) -> None:
        say(f"[{time.monotonic() - started:6.1f}s] {message}")

    try:
        checkpoint = resolve_checkpoint(model_path)
        stage(f"checkpoint {checkpoint}")
        hf_config = read_config(checkpoint)
        tensors = stored_tensors(checkpoint)
    except CheckpointError as e:
        say(f"FAIL: {e}")
        return Verdict(UNREADABLE, [])

    rows = map_weights({k: v[0] for k, v in tensors.items()}, hf_config)
    stage("weight mapping (checkpoint -> MAX graph)")
    dtypes = {k: v[1] for k, v in tensors.items()}
    formats = runs_as(rows, dtypes, int(hf_config.n_layer), devices)
    say(weight_table(rows, dtypes, formats))
    problems = [r for r in rows if r.problem]
    if problems:
        say(f"FAIL: {len(problems)} tensor(s) do not match config.json:")
        for row in problems:
            say(f"  {row.action}: {row.note}")
        return Verdict(FAIL, rows)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    n_positions = int(hf_config.n_positions)
    token_prompts = [tokenizer(p).input_ids for p in prompts]
    too_long = [len(t) for t in token_prompts if len(t) + decode_steps > n_positions]
    if too_long or not all(token_prompts):
        say(f"FAIL: prompts must be non-empty and fit {n_positions} positions")
        return Verdict(UNREADABLE, rows)
    steps = decode_steps + 1
    stage(f"MAX on {devices}: {len(prompts)} prompts as one batch, {steps} steps")
    with _Ticker(say, "compiling / running on MAX"):
        ours = max_greedy_decode(
            checkpoint, token_prompts, steps, devices=devices, architecture=architecture
        )
    stage("transformers (float32, KV cache), the same token ids")
    oracle = transformers_greedy_decode(checkpoint, token_prompts, steps)
    report = compare(ours, oracle, token_prompts, tolerance)
    say(parity_table(report, lambda t: tokenizer.decode([t])))
    verdict = "PASS" if report.passed else "FAIL"
    say(
        f"{verdict}: relative logit error <= {tolerance:g} at every step and "
        "identical greedy tokens" + ("" if report.passed else " not met")
    )
    return Verdict(PASS if report.passed else FAIL, rows, report)


def verdict_json(verdict: Verdict) -> str:
    return json.dumps(
        {
            "status": ["PASS", "FAIL", "UNREADABLE"][verdict.status],
            "problems": [r.note for r in verdict.weights if r.problem],
            "prompts": [
                {
                    "prompt_tokens": p.prompt_len,
                    "relative_errors": p.rel_errors,
                    "first_divergence": p.first_divergence,
                }
                for p in (verdict.parity.prompts if verdict.parity else [])
            ],
        },
        indent=2,
    )
