"""Session fixtures: checkpoints written once, graphs compiled once.

Compiling a graph on these 2-core CPUs takes minutes cold, so every test
that needs MAX outputs shares the session-scoped decodes below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gpt2_max.checkpoints import write_checkpoint

TEXT = (
    "The harbour was quiet in the early morning, and the fishing boats "
    "rocked gently against the pier while gulls argued over scraps. An old "
    "man sat on an upturned crate, mending a net with quick, practised "
    "fingers, and told anyone who would listen about the winter storm of "
    "his childhood, when the sea came over the wall and into the square. "
)


SERVE_API_KEY = "sk-gpt2-max-tests-0123456789abcdef"


@pytest.fixture(scope="session")
def server(request, checkpoints, tmp_path_factory):
    """One `max serve` of the DistilGPT2-shaped fixture for the session;
    with `--serve-api-key`, it requires `SERVE_API_KEY`."""
    from gpt2_max.server import MaxServe

    key = SERVE_API_KEY if request.config.getoption("--serve-api-key") else None
    log = tmp_path_factory.mktemp("serve") / "max-serve.log"
    srv = MaxServe(
        checkpoints["distilgpt2"], ["--devices", "cpu"], log_path=log, api_key=key
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def keyed_server(request, checkpoints, tmp_path_factory):
    """A `max serve` that requires `SERVE_API_KEY`: the shared one under
    `--serve-api-key`, else one of its own."""
    from gpt2_max.server import MaxServe

    if request.config.getoption("--serve-api-key"):
        yield request.getfixturevalue("server")
        return
    log = tmp_path_factory.mktemp("serve-keyed") / "max-serve.log"
    srv = MaxServe(
        checkpoints["distilgpt2"],
        ["--devices", "cpu"],
        log_path=log,
        api_key=SERVE_API_KEY,
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def max_serve_app() -> dict:
    """The app `max serve` builds with the package imported, every route MAX
    can add included, described without a model (`tests/max_serve_app.py`)."""
    import json

    from tests.max_serve_app import EVERY_ROUTE_ENV, run_probe

    result = run_probe(env=EVERY_ROUTE_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serve-api-key",
        action="store_true",
        help="start the shared `max serve` with an API key (tests/e2e/test_serve.py "
        "and tests/e2e/test_serve_access.py then run against the key-on server)",
    )
    parser.addoption(
        "--failover",
        action="store_true",
        help="also run the HAProxy failover tests (two max serve replicas, "
        "about 10 minutes on 2 cores; needs Debian's haproxy)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked `failover` run only with `--failover`: left out of the
    default suite (not skipped), as CI's time budget asks."""
    if config.getoption("--failover"):
        return
    chosen = [item for item in items if not item.get_closest_marker("failover")]
    if len(chosen) != len(items):
        left = [item for item in items if item.get_closest_marker("failover")]
        config.hook.pytest_deselected(items=left)
        items[:] = chosen


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import GPT2Tokenizer

    from gpt2_max.checkpoints import TOKENIZER_DIR

    return GPT2Tokenizer.from_pretrained(TOKENIZER_DIR)


def prompts_for_window(
    tokenizer, n_positions: int, decode_steps: int
) -> list[list[int]]:
    """Three prompts of different lengths; the last one fills the window.

    Its final decode step feeds position n_positions - 1, the last row of
    `wpe`.
    """
    ids = tokenizer(TEXT * 40).input_ids
    longest = n_positions - decode_steps
    assert len(ids) >= longest
    return [
        tokenizer("Hello world").input_ids,
        tokenizer(TEXT).input_ids,
        ids[:longest],
    ]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """(a) DistilGPT2's exact config, laid out as the hub's files are;
    (b) a small config that differs everywhere, as save_pretrained writes it."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "distilgpt2": write_checkpoint(root / "distilgpt2", "distilgpt2", seed=0),
        "variant": write_checkpoint(
            root / "variant", "variant", seed=1, layout="transformers"
        ),
    }


def served_greedy_matches_transformers(server, checkpoint, tokenizer, prompt, n=12):
    """A greedy completion from `server` equals transformers' on `checkpoint`;
    returns the completion for further checks."""
    import openai
    import torch
    from transformers import GPT2LMHeadModel

    with server:  # cold compile included
        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        )
        result = client.completions.create(
            model=server.model, prompt=prompt, max_tokens=n, temperature=0
        )
    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=50256)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # The server holds back a character whose bytes are not all generated yet.
    assert result.choices[0].text == expected.rstrip("\ufffd")
    assert result.usage.prompt_tokens == ids.shape[1]
    assert result.usage.completion_tokens == n
    return result
