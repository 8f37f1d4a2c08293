"""`max serve` end to end: the OpenAI API over our architecture.

One server for the session (`server` in conftest.py, DistilGPT2-shaped
fixture; with `--serve-api-key` it requires a key, which every request
here sends), driven with the official `openai` client and raw HTTP; every
answer is checked against `transformers`' greedy continuation of the same
token ids.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import torch
from transformers import GPT2LMHeadModel

from gpt2_lmhead_model.runtime_threads import WORKER_NICE, runtime_worker_threads
from gpt2_lmhead_model.tokenizer import DEFAULT_CHAT_TEMPLATE
from gpt2_max.server import MaxServe, group_alive, group_pids, unread_metrics_off

pytestmark = pytest.mark.slow

PROMPTS = [
    "Hello world",
    "The harbour was quiet in the early morning, and the fishing boats rocked",
    "An old man sat on an upturned crate, mending a net with quick, practised "
    "fingers, and told anyone who would listen about the winter storm of his "
    "childhood, when the sea came over the wall and into the square.",
]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=server.api_key or "unused", max_retries=0
    )


@pytest.fixture(scope="module")
def hf_model(checkpoints):
    return GPT2LMHeadModel.from_pretrained(
        checkpoints["distilgpt2"], dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def greedy(hf_model, tokenizer):
    """transformers' greedy continuation: (text, new token count, stopped at EOS)."""

    def run(ids: list[int], max_tokens: int) -> tuple[str, int, bool]:
        with torch.inference_mode():
            out = hf_model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=50256,
                eos_token_id=50256,
            )
        new = out[0, len(ids) :].tolist()
        eos = bool(new) and new[-1] == 50256
        text = tokenizer.decode(new, skip_special_tokens=True)
        return text, len(new), eos

    return run


def chat_prompt(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=False,
    )
    return tokenizer(text).input_ids


def complete(client, server, prompt, max_tokens, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.completions.create(
        model=server.model, prompt=prompt, max_tokens=max_tokens, **kwargs
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_equals_transformers_greedy(
    client, server, tokenizer, greedy, prompt
):
    ids = tokenizer(prompt).input_ids
    expected, n_new, _ = greedy(ids, 20)
    result = complete(client, server, prompt, 20)
    choice = result.choices[0]
    assert choice.text == expected
    assert choice.finish_reason == "length"
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == n_new == 20
    assert result.usage.total_tokens == len(ids) + 20


def test_completion_from_token_ids(client, server, tokenizer, greedy):
    ids = tokenizer(PROMPTS[1]).input_ids
    expected, _, _ = greedy(ids, 12)
    assert complete(client, server, ids, 12).choices[0].text == expected


def test_chat_uses_default_template(client, server, tokenizer, greedy):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the tide doing?"},
    ]
    ids = chat_prompt(tokenizer, messages)
    assert tokenizer.decode(ids).endswith("User: What is the tide doing?\nAssistant:")
    expected, n_new, _ = greedy(ids, 16)
    result = client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=16, temperature=0
    )
    assert result.choices[0].message.content == expected
    assert result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == n_new


def test_streaming_equals_non_streaming(client, server):
    for prompt in PROMPTS:
        whole = complete(client, server, prompt, 16)
        chunks = list(complete(client, server, prompt, 16, stream=True))
        assert (
            "".join(c.choices[0].text for c in chunks if c.choices)
            == whole.choices[0].text
        )
        assert chunks[-1].choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=16, temperature=0
    )
    stream = client.chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_concurrent_requests_equal_their_results_alone(client, server, tokenizer):
    words = (PROMPTS[2] + " " + PROMPTS[1]).split()
    jobs = [(" ".join(words[: 3 + 2 * i]), 8 + (i % 5) * 4) for i in range(16)]
    alone = [complete(client, server, p, n).choices[0].text for p, n in jobs]

    together: list[str | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def send(i: int) -> None:
        try:
            barrier.wait()
            together[i] = complete(client, server, *jobs[i]).choices[0].text
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors
    assert together == alone


def sample_first_tokens(client, server, prompt, seeds, **sampling):
    """The first sampled token's text for each seed, requests sent together."""

    def one(seed: int) -> str:
        result = complete(client, server, prompt, 1, seed=seed, **sampling).choices[0]
        return result.text

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, seeds))


def next_token_probs(hf_model, tokenizer, prompt, temperature):
    with torch.inference_mode():
        logits = hf_model(torch.tensor([tokenizer(prompt).input_ids])).logits[0, -1]
    return torch.softmax(logits.double() / temperature, -1)


def test_seed_makes_sampling_reproducible(client, server):
    def sample(seed):
        return (
            complete(client, server, PROMPTS[1], 12, temperature=1.0, seed=seed)
            .choices[0]
            .text
        )

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2), sample(3)}) > 1  # and it is sampling
    greedy_like = complete(
        client, server, PROMPTS[1], 12, extra_body={"top_k": 1}, temperature=1.0
    )
    assert (
        greedy_like.choices[0].text
        == complete(client, server, PROMPTS[1], 12).choices[0].text
    )


def test_top_k_never_samples_outside_the_top_k(client, server, hf_model, tokenizer):
    probs = next_token_probs(hf_model, tokenizer, PROMPTS[1], 1.0)
    top = probs.topk(5).indices.tolist()
    allowed = {tokenizer.decode([t]) for t in top}
    # At temperature 1 the fixture's top 5 hold < 1 % of the mass: without
    # top_k almost every sample falls outside them.
    assert probs[top].sum() < 0.01
    seeds = range(1, 41)
    with_top_k = sample_first_tokens(
        client, server, PROMPTS[1], seeds, temperature=1.0, extra_body={"top_k": 5}
    )
    assert set(with_top_k) <= allowed, set(with_top_k) - allowed
    assert len(set(with_top_k)) > 1  # sampled among the five, not argmax
    without = sample_first_tokens(client, server, PROMPTS[1], seeds, temperature=1.0)
    assert len(set(without) - allowed) > 30


def test_top_p_samples_the_nucleus_in_proportion(client, server, hf_model, tokenizer):
    temperature, top_p, n = 0.1, 0.5, 80
    probs = next_token_probs(hf_model, tokenizer, PROMPTS[1], temperature)
    sorted_probs, order = probs.sort(descending=True)
    size = int((sorted_probs.cumsum(0) < top_p).sum()) + 1
    # The fixture's nucleus: a few tokens, its edge clear of top_p, so
    # the expected set does not hang on rounding.
    assert 2 <= size <= 6
    assert abs(float(sorted_probs[: size - 1].sum()) - top_p) > 0.02
    assert abs(float(sorted_probs[:size].sum()) - top_p) > 0.02
    nucleus = {
        tokenizer.decode([t]): float(p)
        for t, p in zip(
            order[:size].tolist(),
            sorted_probs[:size] / sorted_probs[:size].sum(),
            strict=True,
        )
    }
    assert len(nucleus) == size

    got = sample_first_tokens(
        client, server, PROMPTS[1], range(1, n + 1),
        temperature=temperature, top_p=top_p,
    )  # fmt: skip
    assert set(got) <= set(nucleus), set(got) - set(nucleus)
    for text, p in nucleus.items():  # each in proportion, within 4 sigma
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(got.count(text) - n * p) <= 4 * sigma, (text, got.count(text), p)

    without = sample_first_tokens(
        client, server, PROMPTS[1], range(1, 41), temperature=temperature
    )
    assert set(without) - set(nucleus)  # top_p=1 reaches past the nucleus


def late_stop(text: str) -> str | None:
    """A 4-character stop string whose first occurrence is past a third of
    `text`, so the expected cut leaves real text before it."""
    for start in range(len(text) // 3, len(text) - 4):
        stop = text[start : start + 4]
        if text.index(stop) == start:
            return stop
    return None


def with_late_stop(greedy, id_lists, max_tokens):
    """(index, greedy continuation, stop string) of the first prompt whose
    continuation has a late stop string (random weights often repeat one
    word throughout)."""
    for i, ids in enumerate(id_lists):
        full, _, _ = greedy(ids, max_tokens)
        stop = late_stop(full)
        if stop is not None:
            return i, full, stop
    raise AssertionError("no prompt's greedy continuation has a late stop string")


def test_stop_string_ends_generation(client, server, greedy, tokenizer):
    i, full, stop = with_late_stop(
        greedy, [tokenizer(p).input_ids for p in PROMPTS], 12
    )
    result = complete(client, server, PROMPTS[i], 12, stop=[stop])
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[: full.index(stop)]
    assert result.usage.completion_tokens < 12


def test_stop_strings_stream_like_non_streaming(client, server, greedy, tokenizer):
    i, full, stop = with_late_stop(
        greedy, [tokenizer(p).input_ids for p in PROMPTS], 16
    )
    stops = [stop, "zzz"]
    whole = complete(client, server, PROMPTS[i], 16, stop=stops).choices[0]
    chunks = list(complete(client, server, PROMPTS[i], 16, stop=stops, stream=True))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == whole.text == full[: full.index(stop)]
    assert whole.finish_reason == chunks[-1].choices[0].finish_reason == "stop"

    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    i, full, stop = with_late_stop(
        greedy, [chat_prompt(tokenizer, m) for m in conversations], 16
    )
    whole = client.chat.completions.create(
        model=server.model,
        messages=conversations[i],
        max_tokens=16,
        temperature=0,
        stop=stop,
    ).choices[0]
    stream = client.chat.completions.create(
        model=server.model,
        messages=conversations[i],
        max_tokens=16,
        temperature=0,
        stop=stop,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.message.content == full[: full.index(stop)]
    assert whole.finish_reason == chunks[-1].choices[0].finish_reason == "stop"


def test_prompt_longer_than_the_window_is_refused(server, tokenizer):
    ids = tokenizer(PROMPTS[2] * 40).input_ids[:1100]
    r = requests.post(
        f"{server.url}/v1/completions",
        json={"model": server.model, "prompt": ids, "max_tokens": 4},
        headers=server.headers,
        timeout=60,
    )
    assert r.status_code == 400
    assert "1100 tokens exceeds" in r.json()["error"]["message"]
    assert "1024" in r.json()["error"]["message"]


def test_generation_stops_at_the_window(client, server, tokenizer, greedy):
    ids = tokenizer(PROMPTS[2] * 40).input_ids[:1010]
    result = complete(client, server, ids, 100)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 1024 - 1010
    expected, _, _ = greedy(ids, 1024 - 1010)
    assert result.choices[0].text == expected


BAD_REQUESTS = [
    # (name, path, raw body, expected status, words the message must contain)
    ("malformed JSON", "completions", b'{"prompt": "hi", ', 400, ["not valid JSON"]),
    (
        "not UTF-8",
        "completions",
        b'{"prompt": "\xff\xfe", "max_tokens": 2}',
        400,
        ["UTF-8"],
    ),
    ("empty body", "completions", b"", 400, ["empty"]),
    (
        "deeply nested JSON",
        "completions",
        b'{"prompt": ' + b"[" * 5000,
        400,
        ["not valid JSON", "nested too deep"],
    ),
    ("nested JSON array", "chat/completions", b"[" * 5000, 400, ["nested too deep"]),
    (
        "empty prompt",
        "completions",
        {"prompt": "", "max_tokens": 2},
        400,
        ["prompt", "empty"],
    ),
    (
        "empty messages",
        "chat/completions",
        {"messages": [], "max_tokens": 2},
        400,
        ["messages", "empty"],
    ),
    (
        "zero max_tokens",
        "completions",
        {"prompt": "hi", "max_tokens": 0},
        400,
        ["max_tokens", "0"],
    ),
    (
        "negative max_tokens",
        "completions",
        {"prompt": "hi", "max_tokens": -3},
        400,
        ["max_tokens", "-3"],
    ),
    (
        "temperature too high",
        "completions",
        {"prompt": "hi", "temperature": 2.5},
        400,
        ["temperature", "2.5"],
    ),
    (
        "negative temperature",
        "chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "temperature": -1},
        400,
        ["temperature"],
    ),
    (
        "top_p above 1",
        "completions",
        {"prompt": "hi", "top_p": 1.5},
        400,
        ["top_p", "1.5"],
    ),
    ("NaN top_p", "completions", b'{"prompt": "hi", "top_p": NaN}', 400, ["NaN"]),
    (
        "unknown model",
        "completions",
        {"model": "gpt-4o", "prompt": "hi"},
        404,
        ["gpt-4o"],
    ),
    (
        "token id out of vocabulary",
        "completions",
        {"prompt": [15496, 60000], "max_tokens": 2},
        400,
        ["60000"],
    ),
    ("n > 1", "completions", {"prompt": "hi", "n": 3}, 400, ["n=3"]),
    ("seed 0", "completions", {"prompt": "hi", "seed": 0}, 400, ["seed"]),
    (
        "wrong type",
        "completions",
        {"prompt": "hi", "max_tokens": "ten"},
        400,
        ["max_tokens"],
    ),
    (
        "unknown field",
        "completions",
        {"prompt": "hi", "frobnicate": 1},
        400,
        ["frobnicate"],
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_is_refused_and_server_keeps_serving(
    client, server, tokenizer, greedy, path, body, status, words
):
    if isinstance(body, dict):
        body = json.dumps({"model": server.model, **body}).encode()
    r = requests.post(
        f"{server.url}/v1/{path}",
        data=body,
        headers={"content-type": "application/json", **server.headers},
        timeout=60,
    )
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for word in words:
        assert word in message, message

    expected, _, _ = greedy(tokenizer(PROMPTS[0]).input_ids, 6)
    assert complete(client, server, PROMPTS[0], 6).choices[0].text == expected


def test_shutdown_leaves_no_processes(checkpoints, tmp_path):
    """Its own server (the module's stays up for the other tests)."""
    srv = MaxServe(
        checkpoints["distilgpt2"], ["--devices", "cpu"], log_path=tmp_path / "log"
    )
    srv.start()
    try:
        assert srv.healthy()
    finally:
        pgid = srv.process.pid
        srv.stop()
    assert srv.process.returncode is not None
    assert not group_alive(pgid)


def test_model_worker_runtime_threads_yield_to_python(client, server):
    """The model worker lowered its CPU runtime workers' priority once its
    model was built (`runtime_threads`)."""
    complete(client, server, PROMPTS[0], 2)
    priorities = {}
    for pid in group_pids(server.process.pid):
        tids = runtime_worker_threads(Path(f"/proc/{pid}/task"))
        if tids:
            priorities[pid] = {os.getpriority(os.PRIO_PROCESS, t) for t in tids}
    assert {WORKER_NICE} in priorities.values(), priorities


def test_no_metrics_worker_when_nothing_reads_metrics(client, server):
    """With telemetry disabled and no OTLP endpoint, MAX serves no metrics,
    so the server runs without its metrics worker: the model worker is the
    only process MAX spawned (`unread_metrics_off`)."""
    complete(client, server, PROMPTS[0], 2)
    spawned = [
        pid
        for pid in group_pids(server.process.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(spawned) == 1, spawned


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {"MAX_SERVE_METRIC_RECORDING_METHOD": "NOOP"}),
        ({"MAX_SERVE_METRIC_RECORDING_METHOD": "PROCESS"}, {}),
        ({"MAX_SERVE_OTLP_METRICS_ENDPOINT": "http://collector:4317"}, {}),
        (
            {"MAX_SERVE_OTLP_METRICS_ENDPOINT": ""},
            {"MAX_SERVE_METRIC_RECORDING_METHOD": "NOOP"},
        ),
    ],
)
def test_metrics_off_only_when_unread(environ, expected):
    assert unread_metrics_off(environ) == expected
