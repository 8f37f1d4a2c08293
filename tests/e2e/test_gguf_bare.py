"""A GGUF file alone, served: `gpt2-max unpack` writes the config.json and
tokenizer from its metadata, and MAX gives the greedy tokens of the
checkpoint the file came from. The checkpoint has only `tokenizer.json`
(transformers 5's save_pretrained), so its conversion is checked too."""

from __future__ import annotations

import pytest

from gpt2_max.gguf_export import write_gguf
from gpt2_max.gguf_unpack import unpack
from gpt2_max.parity import (
    compare,
    max_greedy_decode,
    transformers_greedy_decode,
)
from gpt2_max.server import MaxServe

from ..conftest import prompts_for_window, served_greedy_matches_transformers
from ..unit.test_tokenizer_files import tokenizer_json_only

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4  # the float32 bar of tests/e2e/test_parity.py
DECODE_STEPS = 16
PROMPT = "An old man sat on an upturned crate, mending a net"


@pytest.fixture(scope="module")
def bare(checkpoints, tmp_path_factory):
    """(source checkpoint, the unpacked GGUF), the GGUF converted from a
    tokenizer.json-only copy of the source."""
    root = tmp_path_factory.mktemp("bare")
    source = checkpoints["variant"]
    alone = tokenizer_json_only(source, root / "tokenizer-json")
    path = write_gguf(alone, root / "model.gguf", "f32")
    return source, unpack(path, root / "unpacked")


def test_bare_gguf_matches_its_source_checkpoint(bare, tokenizer):
    source, unpacked = bare
    prompts = prompts_for_window(tokenizer, 256, DECODE_STEPS)
    ours = max_greedy_decode(
        unpacked.model_dir,
        prompts,
        DECODE_STEPS + 1,
        encoding=unpacked.encoding,
        weight_path=unpacked.weight_path,
    )
    oracle = transformers_greedy_decode(source, prompts, DECODE_STEPS + 1)
    for prompt in compare(ours, oracle, prompts).prompts:
        assert prompt.first_divergence is None, prompt
        assert prompt.max_rel_error <= TOLERANCE, prompt.max_rel_error


def test_bare_gguf_serves_its_source_checkpoints_completion(bare, tokenizer, tmp_path):
    source, unpacked = bare
    server = MaxServe(
        unpacked.model_dir,
        [*unpacked.serve_flags()[2:], "--devices", "cpu"],
        log_path=tmp_path / "max-serve.log",
    )
    served_greedy_matches_transformers(server, source, tokenizer, PROMPT)
