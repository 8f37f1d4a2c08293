"""The logprobs layout and request checks, without a server."""

from __future__ import annotations

import json

import pytest

from gpt2_lmhead_model.serving.logprobs_layout import (
    CompletionLogprobsLayout,
    LogprobsMismatch,
    forwarded_request,
    token_bytes,
)
from gpt2_lmhead_model.serving.request_checks import Endpoint, check_request
from gpt2_max.perplexity import perplexity_of, windows


def test_windows_score_every_token_but_the_first_once():
    for n, size, stride in [(10, 4, 2), (9, 4, 4), (3, 4, 1), (700, 256, 128)]:
        scored = []
        for w in windows(n, size, stride):
            assert w.end - w.begin <= size and w.begin <= w.score_from <= w.end
            assert w.score_from - w.begin >= min(size - stride, w.begin) or (
                w.begin == 0
            )
            scored += range(w.score_from, w.end)
        assert scored == list(range(1, n))
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


def test_perplexity_of_uniform_scorer_is_its_inverse_probability():
    ppl, count = perplexity_of(
        list(range(50)), 8, 3, lambda w: [None] + [-2.0] * (len(w) - 1)
    )
    assert count == 49
    assert ppl == pytest.approx(2.718281828459045**2)


def test_checks_name_the_flag_and_limits():
    def check(chat=False, echo_enabled=False, **request):
        """The refused request's (status, message, param); None if it passes."""
        endpoint = Endpoint.CHAT if chat else Endpoint.COMPLETIONS
        body = json.dumps(request).encode()
        result = check_request(endpoint, body, [], echo_enabled)
        if isinstance(result, dict):
            assert result == request
            return None
        return result.status, result.message, result.param

    status, message, param = check(echo=True, logprobs=1)
    assert (status, param) == (400, "echo") and "--enable-echo" in message
    assert check(echo=True, logprobs=1, echo_enabled=True) is None
    assert check(echo=True) is None  # echo alone needs no prompt logprobs
    assert check(logprobs=8)[2] == "logprobs"
    assert check(logprobs=True)[2] == "logprobs"
    assert check(max_tokens=0)[2] == "max_tokens"
    assert check(max_tokens=0, echo=True, logprobs=1, echo_enabled=True) is None
    assert check(chat=True, logprobs=True, top_logprobs=8)[2] == "top_logprobs"
    assert check(chat=True, top_logprobs=2)[2] == "top_logprobs"
    assert check(chat=True, logprobs=True, top_logprobs=7) is None


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer):
    return tokenizer


def _layout(request, tokenizer):
    return CompletionLogprobsLayout(
        request,
        tokenizer,
        lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False),
    )


def test_echo_layout_from_max_response(hf_tokenizer):
    tok = hf_tokenizer
    prompt = "Caf\u00e9 over the sea"
    prompt_ids = tok(prompt).input_ids
    gen = tok(" and more").input_ids
    n = len(prompt_ids)
    values = [-float(i) for i in range(1, n + len(gen))]  # prompt[1:] + generated
    tops = [{"x": v} for v in values]
    max_response = {
        "choices": [
            {
                "index": 0,
                "text": " and more",
                "finish_reason": "length",
                "logprobs": {"token_logprobs": values, "top_logprobs": tops,
                             "tokens": None, "text_offset": None},
                "token_ids": gen,
                "prompt_token_ids": prompt_ids,
            }
        ],
        "usage": {"prompt_tokens": n, "completion_tokens": len(gen), "total_tokens": 0},
    }  # fmt: skip
    request = {"prompt": prompt, "echo": True, "logprobs": 1}
    assert forwarded_request(request)["return_token_ids"] is True
    out = json.loads(_layout(request, tok).response(json.dumps(max_response).encode()))
    choice = out["choices"][0]
    assert choice["text"] == prompt + " and more"
    assert "token_ids" not in choice and "prompt_token_ids" not in choice
    lp = choice["logprobs"]
    assert lp["token_logprobs"] == [None, *values]
    assert lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    for name, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert choice["text"][offset:].startswith(name)

    # max_tokens 0: the one generated token is dropped from every field.
    one = json.loads(json.dumps(max_response))
    one["choices"][0]["token_ids"] = gen[:1]
    one["choices"][0]["logprobs"]["token_logprobs"] = values[:n]
    one["choices"][0]["logprobs"]["top_logprobs"] = tops[:n]
    one["usage"]["completion_tokens"] = 1
    request = {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 0}
    assert forwarded_request(request)["max_tokens"] == 1
    out = json.loads(_layout(request, tok).response(json.dumps(one).encode()))
    choice = out["choices"][0]
    assert choice["text"] == prompt
    assert out["usage"]["completion_tokens"] == 0
    assert choice["logprobs"]["token_logprobs"] == [None, *values[: n - 1]]
    assert choice["logprobs"]["top_logprobs"][1] == {
        choice["logprobs"]["tokens"][1]: values[0]
    }

    # A count that does not match the tokens is an error, not a guess.
    short = json.loads(json.dumps(max_response))
    short["choices"][0]["logprobs"]["token_logprobs"] = values[1:]
    with pytest.raises(LogprobsMismatch):
        _layout({"prompt": prompt, "echo": True, "logprobs": 1}, tok).response(
            json.dumps(short).encode()
        )


def test_partial_utf8_tokens_are_named_by_their_bytes(hf_tokenizer):
    ids = hf_tokenizer("\U0001f600").input_ids
    assert b"".join(token_bytes(hf_tokenizer, t) for t in ids) == "\U0001f600".encode()
