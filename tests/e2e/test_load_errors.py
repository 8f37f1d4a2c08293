"""A checkpoint `max serve` cannot load: a one-line cause, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from safetensors.torch import load_file, save_file

from gpt2_max.server import SERVE_ENV, free_port

pytestmark = pytest.mark.slow


def serve_output(model_path, env=None) -> tuple[int, str]:
    result = subprocess.run(
        [
            "max", "serve", "--custom-architectures", "gpt2_lmhead_model",
            "--model-path", str(model_path), "--devices", "cpu",
            "--host", "127.0.0.1", "--port", str(free_port()),
        ],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, **SERVE_ENV, **(env or {})}, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def broken_copy(checkpoints, tmp_path, name):
    path = tmp_path / name
    shutil.copytree(checkpoints["variant"], path)
    return path


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def edit_weights(path, edit):
    weights = load_file(path / "model.safetensors")
    edit(weights)
    save_file(weights, path / "model.safetensors", {"format": "pt"})


def drop_bias(weights):
    del weights["transformer.h.1.mlp.c_fc.bias"]


def misshape(weights):
    weights["transformer.h.0.attn.c_proj.weight"] = weights[
        "transformer.h.0.attn.c_proj.weight"
    ][:, :90].contiguous()


CASES = {
    "no config.json": (
        lambda p: (p / "config.json").unlink(),
        "No config.json",
    ),
    "not GPT2LMHeadModel": (
        lambda p: edit_config(p, architectures=["GPT2ForSequenceClassification"]),
        "Architecture 'GPT2ForSequenceClassification' not found",
    ),
    "unsupported config value": (
        lambda p: edit_config(p, activation_function="mish"),
        "activation_function='mish' is not supported",
    ),
    "missing tensor": (
        lambda p: edit_weights(p, drop_bias),
        "missing tensor h.1.mlp.c_fc.bias (expected [160])",
    ),
    "misshaped tensor": (
        lambda p: edit_weights(p, misshape),
        "tensor transformer.h.0.attn.c_proj.weight has shape [96, 90], "
        "expected [96, 96]",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_load_error_is_one_line(checkpoints, tmp_path, case):
    breaks, cause = CASES[case]
    path = broken_copy(checkpoints, tmp_path, "broken")
    breaks(path)
    code, output = serve_output(path)
    assert code != 0
    assert "Traceback" not in output, output[-3000:]
    cause_lines = [line for line in output.splitlines() if cause in line]
    assert len(cause_lines) == 1, output[-3000:]


def test_bad_worker_nice_is_one_line(checkpoints):
    """`GPT2_MAX_WORKER_NICE` (`runtime_threads`) is checked before compiling."""
    code, output = serve_output(
        checkpoints["variant"], env={"GPT2_MAX_WORKER_NICE": "high"}
    )
    assert code != 0
    assert "Traceback" not in output, output[-3000:]
    cause = "GPT2_MAX_WORKER_NICE='high' is not a nice level from 0 to 19"
    assert len([line for line in output.splitlines() if cause in line]) == 1, output
