"""`max serve` started the way a service manager starts it: from an
unrelated directory, without PYTHONPATH, the environment's `bin` not on
PATH, the package found only through its installation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpt2_max.server import MaxServe

from ..conftest import served_greedy_matches_transformers
from ..unit.test_worker_interpreter import path_without_this_environment

pytestmark = pytest.mark.slow

PROMPT = "The harbour was quiet in the early morning, and the fishing boats"


def test_serve_from_another_directory_matches_transformers(
    checkpoints, tokenizer, tmp_path
):
    checkpoint = checkpoints["variant"]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    server = MaxServe(
        checkpoint,
        ["--devices", "cpu"],
        log_path=tmp_path / "max-serve.log",
        env={"PATH": path_without_this_environment()},
        unset_env=["PYTHONPATH"],
        cwd=workdir,
        max_executable=str(Path(sys.executable).parent / "max"),
    )
    served_greedy_matches_transformers(server, checkpoint, tokenizer, PROMPT)
