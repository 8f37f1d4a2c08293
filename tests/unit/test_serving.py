"""Request checks and stop-string enforcement, without a server."""

from __future__ import annotations

import json

import pytest

from gpt2_lmhead_model.serving.request_checks import (
    Endpoint,
    RequestError,
    check_request,
)
from gpt2_lmhead_model.serving.stop_strings import (
    StopStrings,
    cut_event,
    cut_response,
)

SERVED = ["my-model"]


def check(body, endpoint=Endpoint.COMPLETIONS):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return check_request(endpoint, raw, SERVED)


def test_a_good_request_passes_through_unchanged():
    body = {
        "model": "my-model",
        "prompt": "hi",
        "max_tokens": 3,
        "temperature": 0,
        "top_p": 1,
        "seed": 7,
        "stop": ["\n"],
        "n": 1,
    }
    assert check(body) == body
    assert check({"model": "", "prompt": [1, 2]}) == {"model": "", "prompt": [1, 2]}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"\x80abc", 400, None, "not valid UTF-8: byte 0x80 at offset 0"),
        (b"  ", 400, None, "empty"),
        (
            b'{"prompt": ',
            400,
            None,
            "not valid JSON: Expecting value at line 1 column 12",
        ),
        (b'{"top_p": Infinity}', 400, None, "Infinity is not a JSON number"),
        (b"[1, 2]", 400, None, "must be a JSON object, got list"),
        (b"[" * 5000, 400, None, "not valid JSON: arrays or objects nested too deep"),
        (
            b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            400,
            None,
            "nested too deep",
        ),
        ({"model": "other", "prompt": "x"}, 404, "model", "'other' is not served here"),
        ({"prompt": ""}, 400, "prompt", "prompt must not be empty"),
        ({"prompt": ["a", ""]}, 400, "prompt", "prompt[1] must not be empty"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "got 0"),
        ({"prompt": "x", "max_tokens": True}, 400, "max_tokens", "got True"),
        (
            {"prompt": "x", "max_completion_tokens": -1},
            400,
            "max_completion_tokens",
            "-1",
        ),
        ({"prompt": "x", "temperature": 2.01}, 400, "temperature", "[0, 2], got 2.01"),
        ({"prompt": "x", "top_p": -0.1}, 400, "top_p", "[0, 1]"),
        (
            {"prompt": "x", "repetition_penalty": 0},
            400,
            "repetition_penalty",
            "(0, inf]",
        ),
        ({"prompt": "x", "top_k": -2}, 400, "top_k", "got -2"),
        ({"prompt": "x", "seed": 0}, 400, "seed", "seed 0"),
        ({"prompt": "x", "seed": 2**64}, 400, "seed", "[1, 2**64)"),
        ({"prompt": "x", "stop": ["a", ""]}, 400, "stop", "must not be empty"),
        ({"prompt": "x", "n": 2}, 400, "n", "n=2"),
    ],
)
def test_bad_requests_name_what_is_wrong(body, status, param, words):
    error = check(body)
    assert isinstance(error, RequestError)
    assert (error.status, error.param) == (status, param)
    assert words in error.message
    envelope = json.loads(error.body())["error"]
    assert envelope["message"] == error.message
    assert envelope["type"] == "invalid_request_error"


def test_chat_messages_must_not_be_empty():
    error = check({"messages": []}, Endpoint.CHAT)
    assert isinstance(error, RequestError) and error.param == "messages"


def test_other_type_errors_are_left_to_max():
    # MAX's own schema reports these with the field named.
    body = {"prompt": "x", "temperature": "hot", "stream": "yes"}
    assert check(body) == body


def test_whole_response_is_cut_at_the_first_stop_string():
    body = json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "text": "one two STOP three STOP",
                    "finish_reason": "stop",
                },
                {"index": 1, "text": "no stop here", "finish_reason": "length"},
            ]
        }
    ).encode()
    out = json.loads(cut_response(body, StopStrings(["STOP", "two"]), chat=False))
    assert out["choices"][0]["text"] == "one "
    assert out["choices"][1] == {
        "index": 1,
        "text": "no stop here",
        "finish_reason": "length",
    }

    chat = json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Sure.\nUser: more"},
                    "finish_reason": "length",
                }
            ]
        }
    ).encode()
    out = json.loads(cut_response(chat, StopStrings(["\nUser:"]), chat=True))
    assert out["choices"][0]["message"]["content"] == "Sure."
    assert out["choices"][0]["finish_reason"] == "stop"


def stream(pieces, stops, chat=False):
    """Feeds text pieces through `cut_event` as MAX's SSE chunks."""
    cut = StopStrings(stops)
    sent, reasons = [], []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice = {"index": 0, "finish_reason": "length" if last else None}
        if chat:
            choice["delta"] = {"content": piece}
        else:
            choice["text"] = piece
        event = cut_event(
            b"data: " + json.dumps({"choices": [choice]}).encode(), cut, chat
        )
        if event is None:
            continue
        out = json.loads(event[len(b"data: ") :])["choices"][0]
        sent.append(out["delta"]["content"] if chat else out["text"])
        reasons.append(out["finish_reason"])
    return "".join(sent), reasons


def test_streamed_stop_string_split_across_chunks_is_never_sent():
    text, reasons = stream(["Hel", "lo wo", "rld and", " more", " text"], ["world"])
    assert text == "Hello "
    assert reasons[-1] == "stop"


def test_streamed_text_without_stop_is_sent_whole():
    pieces = ["The ", "quick ", "brown ", "fox"]
    text, reasons = stream(pieces, ["zebra"], chat=True)
    assert text == "".join(pieces)
    assert reasons[-1] == "length"


def test_chunks_after_the_stop_are_dropped():
    cut = StopStrings(["X"])
    first = cut_event(
        b'data: {"choices": [{"index": 0, "text": "aXb", "finish_reason": null}]}',
        cut,
        False,
    )
    assert json.loads(first[6:])["choices"][0] == {
        "index": 0,
        "text": "a",
        "finish_reason": "stop",
    }
    after = cut_event(
        b'data: {"choices": [{"index": 0, "text": "c", "finish_reason": "stop"}]}',
        cut,
        False,
    )
    assert after is None
    assert cut_event(b"data: [DONE]", cut, False) == b"data: [DONE]"
    usage = b'data: {"choices": [], "usage": {"completion_tokens": 3}}'
    assert json.loads(cut_event(usage, cut, False)[6:])["usage"] == {
        "completion_tokens": 3
    }
