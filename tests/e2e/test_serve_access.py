"""Who may use which route, end to end on `max serve`.

Two servers of the session: `server` (no key, unless the run has
`--serve-api-key`) and `keyed_server` (requires `SERVE_API_KEY`; the same
server under `--serve-api-key`). Every route of `routes.ROUTES` is tried.
"""

from __future__ import annotations

import os
import re
import subprocess

import openai
import pytest
import requests

from gpt2_lmhead_model.serving.routes import ADMIN_ROUTES_ENV, ROUTES, Access
from gpt2_max.server import SERVE_ENV, free_port
from tests.conftest import SERVE_API_KEY

pytestmark = pytest.mark.slow

PROBES = [r for r in ROUTES if r.access is Access.PROBE]
PROTECTED = [r for r in ROUTES if r.access is not Access.PROBE]
CLOSED = [r for r in ROUTES if r.access in (Access.CLOSED, Access.ADMIN)]
BAD_AUTH = {
    "no key": ({}, {}),
    "wrong key": ({"Authorization": "Bearer sk-not-the-key"}, {}),
    "wrong scheme": ({"Authorization": f"Basic {SERVE_API_KEY}"}, {}),
    "key as query parameter": ({}, {"api_key": SERVE_API_KEY}),
}
CHAT = [{"role": "user", "content": "The tide is"}]


def send(server, route, headers=None, params=None, body=None):
    method = sorted(route.methods)[0]
    path = re.sub(r"\{[^}]+\}", "x1", route.path)
    return requests.request(
        method,
        server.url + path,
        headers=headers or {},
        params=params,
        json=body if body is not None else ({} if method == "POST" else None),
        timeout=120,
    )


@pytest.mark.parametrize("auth", list(BAD_AUTH))
def test_protected_routes_refuse_a_bad_key(keyed_server, auth):
    headers, params = BAD_AUTH[auth]
    for route in PROTECTED:
        r = send(keyed_server, route, headers, params)
        assert r.status_code == 401, (route.path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key", route.path
        assert error["type"] == "invalid_request_error"


def test_the_key_lets_the_openai_client_in(keyed_server):
    client = openai.OpenAI(
        base_url=f"{keyed_server.url}/v1", api_key=SERVE_API_KEY, max_retries=0
    )
    assert [m.id for m in client.models.list()] == [keyed_server.model]
    result = client.completions.create(
        model=keyed_server.model, prompt="Hello", max_tokens=3, temperature=0
    )
    assert result.usage.completion_tokens == 3
    wrong = openai.OpenAI(
        base_url=f"{keyed_server.url}/v1", api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


@pytest.mark.parametrize("which", ["server", "keyed_server"])
def test_probes_stay_open(request, which):
    srv = request.getfixturevalue(which)
    for route in PROBES:
        r = send(srv, route)
        assert r.status_code == 200, (route.path, r.text)


@pytest.mark.parametrize("which", ["server", "keyed_server"])
def test_closed_routes_are_refused_even_with_the_key(request, which):
    srv = request.getfixturevalue(which)
    for route in CLOSED:
        r = send(srv, route, srv.headers)
        expected = 403 if route.access is Access.ADMIN else 404
        assert r.status_code == expected, (route.path, r.status_code, r.text)
        if route.access is Access.ADMIN:
            assert f"{ADMIN_ROUTES_ENV}=1" in r.json()["error"]["message"]


INVOCATION_REFUSALS = [
    {"messages": CHAT, "n": 2},
    {"messages": CHAT, "seed": 0},
    {"messages": []},
    {"messages": CHAT, "temperature": -1},
    {"messages": CHAT, "max_tokens": 0},
    {"messages": CHAT, "logprobs": True, "top_logprobs": 99},
    {"model": "gpt-4o", "messages": CHAT},
]


@pytest.mark.parametrize("body", INVOCATION_REFUSALS, ids=lambda b: str(b)[:40])
def test_invocations_refuses_what_chat_completions_refuses(server, body):
    # With the served model named, MAX itself would accept most of these
    # (`n: 2` answered with one choice, `seed: 0` ignored).
    body = {"model": server.model, **body}
    answers = []
    for path in ("/v1/chat/completions", "/invocations"):
        r = requests.post(
            server.url + path, json=body, headers=server.headers, timeout=120
        )
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] in (400, 404)


def test_invocations_cuts_at_stop_strings_as_chat_completions(server):
    body = {"model": server.model, "messages": CHAT, "max_tokens": 12}
    body["temperature"] = 0
    whole = requests.post(
        server.url + "/v1/chat/completions", json=body, headers=server.headers,
        timeout=120,
    ).json()["choices"][0]["message"]["content"]  # fmt: skip
    assert len(whole) > 4
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
    cut = {**body, "stop": [stop]}
    answers = [
        requests.post(
            server.url + path, json=cut, headers=server.headers, timeout=120
        ).json()["choices"][0]
        for path in ("/v1/chat/completions", "/invocations")
    ]
    # MAX 26.7 cuts a whole chat answer at a stop string itself: this
    # checks the two routes agree, the refusals above that both are checked.
    for choice in answers:
        assert choice["message"]["content"] == whole[: whole.index(stop)]
        assert choice["finish_reason"] == "stop"


def test_unusable_key_stops_max_serve_in_one_line(checkpoints):
    """Refused before the model loads: no compile, one line."""
    result = subprocess.run(
        [
            "max", "serve", "--custom-architectures", "gpt2_lmhead_model",
            "--model-path", str(checkpoints["variant"]), "--devices", "cpu",
            "--host", "127.0.0.1", "--port", str(free_port()),
        ],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **SERVE_ENV, "GPT2_MAX_API_KEY": "   "},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "empty or only whitespace" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("error: the API key in GPT2_MAX_API_KEY")
