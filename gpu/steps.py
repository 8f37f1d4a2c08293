"""One step of `gpu/check`, run in its own process against the installed
stack (`GPUKIT_SITE` first on `PYTHONPATH`); writes its verdict as JSON.

`python gpu/steps.py STEP --devices gpu|cpu [--shape PRESET] --result F`
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serve_steps
from common import (
    Verdict,
    checkpoint_dir,
    manifest_path,
    oracle_decode,
    scratch,
    site,
    torch_device,
)

# bfloat16 keeps 8 significant bits: each rounding of a weight or an
# activation is off by up to 2^-9 (0.2%), and the errors of some hundred
# roundings per layer add up over 6 to 48 layers to about 1e-2 of the
# logits' norm (MAX's llama3 in bfloat16 against float32 shows the same
# order). 5e-2 leaves room for that and still fails a wrong weight or a
# missing bias (1e-1 and more). Provisional until the first GPU run: the
# JSON records the measured errors so the bar can be set from them.
BFLOAT16_REL_BAR = 5e-2
BFLOAT16_AGREEMENT_BAR = 0.95
PROMPTS = [
    "Hello, my name is",
    "The harbour was quiet in the early morning, and the fishing boats rocked "
    "gently against the pier while gulls argued over scraps.",
]


def step_env(devices: str, shape: str | None) -> Verdict:
    """Where everything comes from, versions, the image's packages against
    what MAX asks of them, and (GPU) the copy bandwidth, the decode ceiling."""
    import importlib.metadata as md
    import importlib.util

    import torch
    import transformers
    from packaging.specifiers import SpecifierSet

    root = site()
    # `max` and `mojo` are namespace packages: where their modules live.
    names = (
        "max.engine",
        "max.pipelines",
        "mojo.paths",
        "gpt2_max",
        "gpt2_lmhead_model",
    )
    modules = {n: importlib.util.find_spec(n).origin for n in names}
    outside = [n for n, f in modules.items() if not str(f).startswith(str(root))]
    mojo = root / "modular" / "bin" / "mojo"
    mojo_version = subprocess.run(
        [str(mojo), "--version"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    mismatched = {}
    manifest = json.loads(manifest_path().read_text())
    for name, specs in manifest["image_requirements"].items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            mismatched[name] = "missing"
            continue
        bad = [s for s in specs if have not in SpecifierSet(s.split(": ", 1)[1])]
        if bad:
            mismatched[name] = f"{have} vs {bad}"
    result: dict[str, Any] = {
        "modules": modules,
        "mojo": mojo_version,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "max": md.version("max"),
        },
        "image_packages_off_max_pins": mismatched,
    }
    if devices == "gpu":
        result["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        result["torch_device"] = torch.cuda.get_device_name(0)
        result["copy_gbs"] = copy_bandwidth_gbs()
        (scratch() / "copy_gbs.json").write_text(json.dumps(result["copy_gbs"]))
    problems = [f"{n} imported from outside {root}" for n in outside]
    if not mojo_version:
        problems.append(f"{mojo} --version printed nothing")
    return Verdict("fail" if problems else "pass", result, "; ".join(problems))


def copy_bandwidth_gbs(gib: int = 2, repeats: int = 10) -> float:
    """A device-to-device copy, bytes read plus written, median of repeats."""
    import torch

    src = torch.randn(gib * 2**28, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        start, end = (
            torch.cuda.Event(enable_timing=True),
            torch.cuda.Event(enable_timing=True),
        )
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * src.numel() * 4 / times[len(times) // 2] / 1e9


def step_checkpoint(devices: str, shape: str) -> Verdict:
    out = checkpoint_dir(shape)
    proc = subprocess.run(
        ["gpt2-max", "checkpoint", str(out), "--preset", shape],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        return Verdict("error", {}, proc.stderr[-2000:])
    size = sum(f.stat().st_size for f in out.iterdir())
    return Verdict("pass", {"path": str(out), "bytes": size})


def step_verify(devices: str, shape: str) -> Verdict:
    """`gpt2-max verify --devices D` as a user runs it (float32)."""
    verdict = scratch() / f"verify-{shape}.json"
    proc = subprocess.run(
        ["gpt2-max", "verify", "--model-path", str(checkpoint_dir(shape)),
         "--devices", devices, "--json", str(verdict)],
        capture_output=True, text=True,
    )  # fmt: skip
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    result = json.loads(verdict.read_text()) if verdict.is_file() else {}
    status = {0: "pass", 1: "fail"}.get(proc.returncode, "error")
    tail = "" if status == "pass" else (proc.stdout + proc.stderr)[-1500:]
    return Verdict(status, result, tail)


def step_parity_bf16(devices: str, shape: str) -> Verdict:
    """MAX in bfloat16 (float32 on CPU, where MAX refuses bfloat16), fed the
    oracle's tokens at every step, against transformers float32 on the same
    device: the relative logit error per step and the greedy agreement."""
    import numpy as np
    from transformers import AutoTokenizer

    from gpt2_max import parity

    ckpt = checkpoint_dir(shape)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    steps = 33
    encoding = "bfloat16" if devices == "gpu" else "float32"
    oracle = oracle_decode(ckpt, prompts, steps, torch_device(devices))
    ours = parity.max_greedy_decode(
        ckpt, prompts, steps, devices=devices, encoding=encoding, forced=oracle.tokens
    )
    errors = [
        [
            parity.relative_error(ours.logits[s][i], oracle.logits[s][i])
            for s in range(steps)
        ]
        for i in range(len(prompts))
    ]
    agree = [
        float(
            np.mean(
                [a == b for a, b in zip(ours.tokens[i], oracle.tokens[i], strict=True)]
            )
        )
        for i in range(len(prompts))
    ]
    if encoding == "bfloat16":
        rel_bar = getattr(parity, "BFLOAT16_TOLERANCE", BFLOAT16_REL_BAR)
        agreement_bar = BFLOAT16_AGREEMENT_BAR
    else:
        rel_bar, agreement_bar = parity.FLOAT32_TOLERANCE, 1.0
    worst = max(max(e) for e in errors)
    passed = worst <= rel_bar and min(agree) >= agreement_bar
    result = {
        "encoding": encoding,
        "oracle": f"transformers float32 on {torch_device(devices)}",
        "steps": steps,
        "worst_rel_error": worst,
        "rel_errors": errors,
        "teacher_forced_agreement": agree,
        "bars": {"rel_error": rel_bar, "agreement": agreement_bar},
        "bar_provisional": encoding == "bfloat16"
        and not hasattr(parity, "BFLOAT16_TOLERANCE"),
    }
    return Verdict("pass" if passed else "fail", result)


def step_peer(devices: str, shape: str) -> Verdict:
    """transformers `generate` on the same device: the floor peer."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch_device(devices)
    dtype = torch.bfloat16 if devices == "gpu" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(checkpoint_dir(shape)), dtype=dtype
    )
    model = model.to(device).eval()
    levels = [(1, 128), (32, 64)] if devices == "gpu" else [(1, 16), (4, 16)]
    rows = []
    with torch.inference_mode():
        for batch, new in levels:
            ids = torch.arange(64, device=device).repeat(batch, 1) + 1000
            kwargs = dict(do_sample=False, pad_token_id=50256, min_new_tokens=new)
            model.generate(ids, max_new_tokens=4, **{**kwargs, "min_new_tokens": 4})
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, **kwargs)
            if device != "cpu":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            made = (out.shape[1] - ids.shape[1]) * batch
            rows.append(
                {"batch": batch, "new_tokens": new, "tokens_per_second": made / wall}
            )
    return Verdict("pass", {"dtype": str(dtype), "levels": rows})


STEPS: dict[str, Callable[[str, Any], Verdict]] = {
    "env": step_env,
    "checkpoint": step_checkpoint,
    "verify": step_verify,
    "parity_bf16": step_parity_bf16,
    "serve_battery": serve_steps.step_serve_battery,
    "serve_speed": serve_steps.step_serve_speed,
    "peer": step_peer,
}


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally blocks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--devices", choices=["gpu", "cpu"], required=True)
    parser.add_argument("--shape")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        verdict = STEPS[args.step](args.devices, args.shape)
    except BaseException as error:  # recorded, whatever it was
        traceback.print_exc()
        verdict = Verdict("error", {}, f"{type(error).__name__}: {error}"[-2000:])
    record = {
        "status": verdict.status,
        "result": verdict.result,
        "step_seconds": round(time.monotonic() - started, 1),
    }
    if verdict.error:
        record["error"] = verdict.error
    args.result.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(
        f"{args.step} {args.shape or ''}: {verdict.status} {verdict.error}", flush=True
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    sys.exit(main())
