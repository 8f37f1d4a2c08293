"""Log-probabilities, echo and perplexity through the real `max serve`.

Two servers on the small `variant` checkpoint: one started with
`--enable-echo` (prompt log-probabilities), one without. Every number is
checked against `transformers`' `log_softmax` of the same positions,
computed here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import requests
import torch
from transformers import GPT2LMHeadModel

from gpt2_lmhead_model.serving.install import MAX_TOP_LOGPROBS
from gpt2_lmhead_model.serving.logprobs_layout import token_bytes, token_string
from gpt2_max.perplexity import api_token_logprobs, perplexity_of
from gpt2_max.server import MaxServe
from tests.conftest import TEXT

pytestmark = pytest.mark.slow

PROMPTS = [
    "Hello world",
    "The harbour was quiet in the early morning, and the fishing boats rocked",
    "An old man sat on an upturned crate, mending a net with quick, practised "
    "fingers, and told anyone who would listen about the winter storm.",
    "Caf\u00e9 cr\u00e8me \u2014 na\u00efve \U0001f600 emoji",
]
ATOL = 1e-4


def _serve(checkpoint, tmp_path_factory, *flags):
    log = tmp_path_factory.mktemp("serve") / "max-serve.log"
    return MaxServe(checkpoint, ["--devices", "cpu", *flags], log_path=log)


@pytest.fixture(scope="module")
def echo_server(checkpoints, tmp_path_factory):
    # Prompts over 64 tokens are prefilled in chunks: echo must span them.
    srv = _serve(
        checkpoints["variant"],
        tmp_path_factory,
        "--enable-echo",
        "--max-batch-input-tokens",
        "64",
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def plain_server(checkpoints, tmp_path_factory):
    srv = _serve(checkpoints["variant"], tmp_path_factory)
    srv.start()
    yield srv
    srv.stop()


def _client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def hf(checkpoints):
    return GPT2LMHeadModel.from_pretrained(
        checkpoints["variant"], dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def oracle(hf, tokenizer):
    """transformers' greedy continuation and per-position log_softmax."""

    def run(ids: list[int], new: int) -> tuple[list[int], torch.Tensor]:
        with torch.inference_mode():
            if new:
                out = hf.generate(
                    torch.tensor([ids]),
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=50256,
                    eos_token_id=None,
                )
                full = out[0].tolist()
            else:
                full = list(ids)
            logits = hf(torch.tensor([full])).logits[0].double()
        return full, torch.log_softmax(logits, dim=-1)

    return run


def _name(tokenizer, token_id: int) -> str:
    return token_string(token_bytes(tokenizer, token_id))


def _expected_top(tokenizer, row: torch.Tensor, n: int, chosen: int) -> dict:
    """MAX's completions top_logprobs for one position: the n best, then the
    chosen token, keyed by decoded text (ids that decode alike collapse)."""
    top: dict[str, float] = {}
    for token_id in [*row.topk(n).indices.tolist(), chosen]:
        top[tokenizer.decode([token_id])] = float(row[token_id])
    return top


def _check_completion_logprobs(
    tokenizer, choice, ids: list[int], lsm, n_prompt: int, echo: bool, n: int
):
    """One choice's logprobs against transformers; `ids` = prompt + generated."""
    lp = choice.logprobs
    shown = ids if echo else ids[n_prompt:]
    first = 0 if echo else n_prompt
    assert lp.tokens == [_name(tokenizer, t) for t in shown]
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(shown)
    text = choice.text
    for k, token_id in enumerate(shown):
        pos = first + k
        assert text[lp.text_offset[k] :].startswith(tokenizer.decode([token_id])) or (
            "\ufffd" in tokenizer.decode([token_id])
        )
        if pos == 0:
            assert lp.token_logprobs[k] is None and lp.top_logprobs[k] is None
            continue
        row = lsm[pos - 1]
        assert abs(lp.token_logprobs[k] - float(row[token_id])) <= ATOL
        got = lp.top_logprobs[k]
        want = _expected_top(tokenizer, row, n, token_id)
        assert list(got) == list(want), (pos, got, want)
        for key, value in want.items():
            assert abs(got[key] - value) <= ATOL


def _greedy_text(tokenizer, oracle, prompt: str, new: int) -> str:
    ids = tokenizer(prompt).input_ids
    full, _ = oracle(ids, new)
    return tokenizer.decode(full[len(ids) :])


def test_echo_and_generated_logprobs_concurrent_with_plain_requests(
    echo_server, tokenizer, oracle
):
    """Echo+logprobs requests batched with ordinary ones: both exact."""
    client = _client(echo_server)
    new, n = 4, 5

    def scored(prompt):
        return client.completions.create(
            model=echo_server.model,
            prompt=prompt,
            max_tokens=new,
            temperature=0,
            echo=True,
            logprobs=n,
        )

    def plain(prompt):
        return client.completions.create(
            model=echo_server.model, prompt=prompt, max_tokens=8, temperature=0
        )

    with concurrent.futures.ThreadPoolExecutor(2 * len(PROMPTS)) as pool:
        scores = [pool.submit(scored, p) for p in PROMPTS]
        plains = [pool.submit(plain, p) for p in PROMPTS]
        scores = [f.result() for f in scores]
        plains = [f.result() for f in plains]

    for prompt, result, other in zip(PROMPTS, scores, plains, strict=True):
        ids = tokenizer(prompt).input_ids
        full, lsm = oracle(ids, new)
        choice = result.choices[0]
        assert choice.text == prompt + tokenizer.decode(full[len(ids) :])
        assert choice.logprobs.text_offset[0] == 0
        _check_completion_logprobs(
            tokenizer, choice, full, lsm, len(ids), echo=True, n=n
        )
        assert result.usage.completion_tokens == new
        assert other.choices[0].text == _greedy_text(tokenizer, oracle, prompt, 8)
        assert other.choices[0].logprobs is None or not (
            other.choices[0].logprobs.token_logprobs
        )


def test_generated_logprobs_without_echo_flag(plain_server, tokenizer, oracle):
    """Generated-token logprobs need no flag; streaming gives the same."""
    client = _client(plain_server)
    new, n = 5, 3

    def run(prompt, stream=False):
        return client.completions.create(
            model=plain_server.model,
            prompt=prompt,
            max_tokens=new,
            temperature=0,
            logprobs=n,
            stream=stream,
        )

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(run, PROMPTS))
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = tokenizer(prompt).input_ids
        full, lsm = oracle(ids, new)
        choice = result.choices[0]
        assert choice.text == tokenizer.decode(full[len(ids) :])
        _check_completion_logprobs(
            tokenizer, choice, full, lsm, len(ids), echo=False, n=n
        )

        chunks = [c for c in run(prompt, stream=True) if c.choices]
        merged = {"tokens": [], "token_logprobs": [], "text_offset": [], "top": []}
        for c in chunks:
            lp = c.choices[0].logprobs
            if lp is None or not lp.tokens:
                continue
            merged["tokens"] += lp.tokens
            merged["token_logprobs"] += lp.token_logprobs
            merged["text_offset"] += lp.text_offset
            merged["top"] += lp.top_logprobs
        assert "".join(c.choices[0].text for c in chunks) == choice.text
        assert merged["tokens"] == choice.logprobs.tokens
        assert merged["text_offset"] == choice.logprobs.text_offset
        assert merged["token_logprobs"] == pytest.approx(
            choice.logprobs.token_logprobs, abs=ATOL
        )
        assert [list(t) for t in merged["top"]] == [
            list(t) for t in choice.logprobs.top_logprobs
        ]


def test_chat_logprobs_streaming_and_not(plain_server, tokenizer, oracle):
    client = _client(plain_server)
    messages = [{"role": "user", "content": PROMPTS[1]}]
    new, n = 4, 3
    kwargs = dict(
        model=plain_server.model,
        messages=messages,
        max_tokens=new,
        temperature=0,
        logprobs=True,
        top_logprobs=n,
    )
    ids = tokenizer(f"User: {PROMPTS[1]}\nAssistant:").input_ids
    full, lsm = oracle(ids, new)
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert whole.choices[0].message.content == tokenizer.decode(full[len(ids) :])
    assert len(content) == new
    for k, entry in enumerate(content):
        pos = len(ids) + k
        row = lsm[pos - 1]
        assert entry.token == tokenizer.decode([full[pos]])
        assert abs(entry.logprob - float(row[full[pos]])) <= ATOL
        best = row.topk(n).indices.tolist()
        assert [t.token for t in entry.top_logprobs][:n] == [
            tokenizer.decode([t]) for t in best
        ]
        for t, token_id in zip(entry.top_logprobs, best, strict=False):
            assert abs(t.logprob - float(row[token_id])) <= ATOL

    streamed = [
        e
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx(
        [e.logprob for e in content], abs=ATOL
    )


def _still_serves(server, tokenizer, oracle):
    client = _client(server)
    out = client.completions.create(
        model=server.model, prompt=PROMPTS[1], max_tokens=6, temperature=0
    )
    assert out.choices[0].text == _greedy_text(tokenizer, oracle, PROMPTS[1], 6)


def _post(server, body):
    return requests.post(
        f"{server.url}/v1/completions",
        json={"model": server.model, **body},
        timeout=300,
    )


def test_echo_without_flag_is_a_400_naming_it(plain_server, tokenizer, oracle):
    r = _post(plain_server, {"prompt": "The quick brown fox", "echo": True,
                             "logprobs": 1, "max_tokens": 1})  # fmt: skip
    assert r.status_code == 400
    assert "--enable-echo" in r.json()["error"]["message"]
    _still_serves(plain_server, tokenizer, oracle)
    # echo alone needs no prompt logprobs: the prompt text comes back.
    r = _post(plain_server, {"prompt": PROMPTS[1], "echo": True, "max_tokens": 3,
                             "temperature": 0})  # fmt: skip
    assert r.status_code == 200
    ids = tokenizer(PROMPTS[1]).input_ids
    full, _ = oracle(ids, 3)
    assert r.json()["choices"][0]["text"] == PROMPTS[1] + tokenizer.decode(
        full[len(ids) :]
    )


def test_max_tokens_zero_scores_the_prompt(echo_server, tokenizer, oracle):
    prompt = PROMPTS[2]
    ids = tokenizer(prompt).input_ids
    _, lsm = oracle(ids, 0)
    r = _post(echo_server, {"prompt": prompt, "echo": True, "logprobs": 1,
                            "max_tokens": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["text"] == prompt
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == len(ids)
    lp = choice["logprobs"]
    assert lp["tokens"] == [_name(tokenizer, t) for t in ids]
    assert lp["token_logprobs"][0] is None
    for pos in range(1, len(ids)):
        want = float(lsm[pos - 1][ids[pos]])
        assert abs(lp["token_logprobs"][pos] - want) <= ATOL
    _still_serves(echo_server, tokenizer, oracle)

    for body, param in [
        ({"prompt": prompt, "max_tokens": 0}, "max_tokens"),
        ({"prompt": prompt, "max_tokens": 1, "logprobs": MAX_TOP_LOGPROBS + 1},
         "logprobs"),
    ]:  # fmt: skip
        r = _post(echo_server, body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        _still_serves(echo_server, tokenizer, oracle)
    r = requests.post(
        f"{echo_server.url}/v1/chat/completions",
        json={"model": echo_server.model, "max_tokens": 2, "logprobs": True,
              "top_logprobs": MAX_TOP_LOGPROBS + 1,
              "messages": [{"role": "user", "content": "Hi"}]},
        timeout=300,
    )  # fmt: skip
    assert r.status_code == 400
    assert str(MAX_TOP_LOGPROBS) in r.json()["error"]["message"]
    _still_serves(echo_server, tokenizer, oracle)


def _hf_perplexity(hf, ids: list[int], size: int, stride: int) -> float:
    def score(window):
        with torch.inference_mode():
            logits = hf(torch.tensor([list(window)])).logits[0].double()
        lsm = torch.log_softmax(logits, dim=-1)
        return [None] + [float(lsm[i - 1, window[i]]) for i in range(1, len(window))]

    return perplexity_of(ids, size, stride, score)[0]


def test_perplexity_served_and_in_process_equal_transformers(
    echo_server, checkpoints, tokenizer, hf, tmp_path
):
    size = hf.config.n_positions
    text = TEXT * 8
    ids = tokenizer(text).input_ids
    assert len(ids) > 2 * size  # several windows
    stride = size // 2
    want = _hf_perplexity(hf, ids, size, stride)

    served, count = perplexity_of(
        ids, size, stride, api_token_logprobs(_client(echo_server), echo_server.model)
    )
    assert count == len(ids) - 1
    assert math.isclose(served, want, rel_tol=1e-4)

    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    recipe = _documented_recipe(
        {
            '"path/to/checkpoint"': repr(str(checkpoints["variant"])),
            '"http://localhost:8000/v1"': repr(f"{echo_server.url}/v1"),
            '"story.txt"': repr(str(path)),
            "size, stride = 1024, 512": f"size, stride = {size}, {stride}",
        }
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(recipe, {})
    words = printed.getvalue().split()
    assert int(words[3]) == len(ids) - 1
    assert math.isclose(float(words[1]), want, rel_tol=1e-4)

    out = subprocess.run(
        [sys.executable, "-m", "gpt2_max.cli", "perplexity", str(path),
         "--model-path", str(checkpoints["variant"]), "--stride", str(stride)],
        capture_output=True, text=True, timeout=1800, check=True,
    )  # fmt: skip
    words = out.stdout.split()
    assert words[0] == "perplexity" and int(words[3]) == len(ids) - 1
    assert math.isclose(float(words[1]), want, rel_tol=1e-4)


def _documented_recipe(substitutions: dict[str, str]) -> str:
    """docs/SCORING.md's `openai` perplexity recipe, pointed at this test's
    files."""
    doc = Path(__file__).parents[2] / "docs" / "SCORING.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    (recipe,) = [b for b in blocks if "echo=True" in b]
    for old, new in substitutions.items():
        assert recipe.count(old) == 1, old
        recipe = recipe.replace(old, new)
    return recipe
