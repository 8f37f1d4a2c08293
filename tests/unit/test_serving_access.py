"""Who may use which route: the API key, the route list, without a server.

The guard is driven as uvicorn drives it (ASGI scopes), in front of a stub
app that records what reaches it; the route list is checked against the
routes of the app `max serve` really builds (`tests/max_serve_app.py`).
"""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import pytest

from gpt2_lmhead_model.serving import api_key
from gpt2_lmhead_model.serving.api_key import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    ApiKeyError,
    has_key,
    load_api_key,
)
from gpt2_lmhead_model.serving.guard import AccessPolicy, RouteGuard
from gpt2_lmhead_model.serving.install import StartUpError
from gpt2_lmhead_model.serving.middleware import OpenAIRequestChecks
from gpt2_lmhead_model.serving.request_checks import Endpoint
from gpt2_lmhead_model.serving.routes import (
    ADMIN_ROUTES_ENV,
    GENERATING_ROUTES,
    ROUTES,
    Access,
    find_route,
)
from tests.max_serve_app import run_probe

KEY = "sk-test-0123456789"


def example_path(template: str) -> str:
    """A concrete path of a route template."""
    return re.sub(r"\{[^}]+\}", "x1", template)


def call(app, method: str, path: str, headers=(), query: bytes = b"", body=b"{}"):
    """(status, headers, JSON body or None) of one request through `app`."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "app": SimpleNamespace(
            state=SimpleNamespace(settings=SimpleNamespace(max_request_bytes=0))
        ),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(payload or b"null")


async def stub_app(scope, receive, send):
    """MAX, as far as these tests go: 200 `reached`."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"x", b"y")]}
    )
    await send({"type": "http.response.body", "body": b'"reached"'})


def guard(api_key=None, admin_routes=False):
    return RouteGuard(stub_app, AccessPolicy(api_key, admin_routes))


PROBES = [r for r in ROUTES if r.access is Access.PROBE]
PROTECTED = [r for r in ROUTES if r.access is not Access.PROBE]
BAD_AUTH = {
    "no key": ([], b""),
    "wrong key": ([("Authorization", "Bearer sk-wrong")], b""),
    "wrong scheme": ([("Authorization", f"Basic {KEY}")], b""),
    "key as query parameter": ([], f"api_key={KEY}".encode()),
    "key twice": ([("Authorization", f"Bearer {KEY}")] * 2, b""),
    "scheme only": ([("Authorization", "Bearer")], b""),
}


@pytest.mark.parametrize("route", PROTECTED, ids=lambda r: r.path)
@pytest.mark.parametrize("auth", list(BAD_AUTH))
def test_every_protected_route_refuses_a_bad_key(route, auth):
    headers, query = BAD_AUTH[auth]
    method = sorted(route.methods)[0]
    status, sent_headers, body = call(
        guard(KEY), method, example_path(route.path), headers, query
    )
    assert status == 401
    assert sent_headers[b"www-authenticate"] == b"Bearer"
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert KEY not in json.dumps(body)


def test_unknown_paths_need_the_key_too():
    assert call(guard(KEY), "GET", "/nothing/here")[0] == 401
    status, _, body = call(
        guard(KEY), "GET", "/nothing/here", [("Authorization", f"Bearer {KEY}")]
    )
    assert (
        status == 404 and "not a route this server serves" in body["error"]["message"]
    )


@pytest.mark.parametrize("key", [None, KEY])
def test_probes_are_open_key_or_not(key):
    for route in PROBES:
        assert call(guard(key), "GET", route.path) == (200, {b"x": b"y"}, "reached")


@pytest.mark.parametrize("key", [None, KEY])
def test_each_access_answers_as_listed(key):
    headers = [("authorization", f"bearer {KEY}")] if key else []
    for route in PROTECTED:
        method = sorted(route.methods)[0]
        status, _, body = call(guard(key), method, example_path(route.path), headers)
        if route.access is Access.SERVED:
            assert status == 200 and body == "reached", route.path
        elif route.access is Access.ADMIN:
            assert status == 403, route.path
            assert f"{ADMIN_ROUTES_ENV}=1" in body["error"]["message"]
            opened = guard(key, admin_routes=True)
            path = example_path(route.path)
            assert call(opened, method, path, headers)[0] == 200, route.path
        else:
            assert status == 404, route.path
            assert route.why and route.why in body["error"]["message"]


def test_a_listed_route_refuses_other_methods():
    status, _, body = call(guard(), "GET", "/v1/completions")
    assert status == 405 and "use POST" in body["error"]["message"]
    assert call(guard(), "DELETE", "/health")[0] == 405


def test_mounted_metrics_cover_every_path_below():
    assert find_route("/metrics").path == "/metrics"
    assert find_route("/metrics/whatever").path == "/metrics"
    assert find_route("/metricsfoo") is None
    assert find_route("/v1/models/gpt2").path == "/v1/models/{model_id}"
    assert find_route("/v1/models/a/b") is None


def test_the_key_is_compared_in_constant_time(monkeypatch):
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(api_key.hmac, "compare_digest", compare_digest)
    assert has_key([(b"authorization", f"Bearer {KEY}".encode())], KEY)
    assert not has_key([(b"authorization", b"Bearer nope")], KEY)
    assert compared == [(KEY.encode(), KEY.encode()), (b"nope", KEY.encode())]


def test_key_from_environment_or_file(tmp_path):
    assert load_api_key({}) is None
    assert load_api_key({API_KEY_ENV: f" {KEY}\n"}) == KEY
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    assert load_api_key({API_KEY_FILE_ENV: str(path)}) == KEY


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({API_KEY_ENV: ""}, "empty or only whitespace"),
        ({API_KEY_ENV: " \t\n"}, "empty or only whitespace"),
        ({API_KEY_ENV: "two words"}, "printable ASCII without spaces"),
        ({API_KEY_ENV: "k\u00e9y"}, "printable ASCII without spaces"),
        ({API_KEY_FILE_ENV: "/nonexistent/key"}, "'/nonexistent/key' cannot be read"),
        ({API_KEY_FILE_ENV: ""}, "set but empty"),
        ({API_KEY_ENV: KEY, API_KEY_FILE_ENV: "/k"}, "set one of them"),
    ],
)
def test_unusable_key_settings_are_refused(environ, words):
    with pytest.raises(ApiKeyError) as error:
        load_api_key(environ)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_empty_key_file_is_refused(tmp_path):
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ApiKeyError, match="empty or only whitespace"):
        load_api_key({API_KEY_FILE_ENV: str(tmp_path / "key")})
    with pytest.raises(ApiKeyError, match="cannot be read"):
        load_api_key({API_KEY_FILE_ENV: str(tmp_path)})  # a directory


def test_admin_switch_is_one_or_zero():
    assert AccessPolicy.from_environ({}) == AccessPolicy(None, False)
    assert AccessPolicy.from_environ({ADMIN_ROUTES_ENV: "1"}).admin_routes
    with pytest.raises(StartUpError, match=f"{ADMIN_ROUTES_ENV}='yes'"):
        AccessPolicy.from_environ({ADMIN_ROUTES_ENV: "yes"})


def test_every_generating_route_is_held_to_the_checks():
    assert GENERATING_ROUTES == {
        "/v1/completions": Endpoint.COMPLETIONS,
        "/v1/chat/completions": Endpoint.CHAT,
        "/invocations": Endpoint.CHAT,
    }
    checks = OpenAIRequestChecks(stub_app)
    for path in ("/v1/chat/completions", "/invocations"):
        for field, value in (("n", 2), ("seed", 0)):
            request = {"messages": [{"role": "user", "content": "hi"}], field: value}
            status, _, body = call(
                checks, "POST", path, body=json.dumps(request).encode()
            )
            assert (status, body["error"]["param"]) == (400, field), path


@pytest.fixture(scope="module")
def every_app_route(max_serve_app) -> list[dict]:
    """Every route of the app `max serve` builds, whatever its settings."""
    return max_serve_app["routes"]


def test_every_route_of_the_app_is_listed(every_app_route):
    """A route a new MAX adds fails here until it is listed as allowed or
    closed in `gpt2_lmhead_model/serving/routes.py`."""
    unlisted = []
    for app_route in every_app_route:
        listed = next((r for r in ROUTES if r.path == app_route["path"]), None)
        methods = set(app_route["methods"]) - {"HEAD"}
        if listed is None or not methods <= listed.methods:
            unlisted.append(app_route)
    assert not unlisted, f"routes neither allowed nor closed: {unlisted}"


def test_every_listed_route_is_in_the_app(every_app_route):
    """A route MAX dropped is dropped from the list too."""
    paths = {r["path"] for r in every_app_route}
    assert [r.path for r in ROUTES if r.path not in paths] == []


def test_unusable_key_stops_the_app_factory_in_one_line():
    """`max serve` builds its app before it loads the model: a key setting
    that cannot be used stops it there, in one line."""
    result = run_probe(env={API_KEY_ENV: "   "})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "API key" in line]
    assert lines == [
        f"error: the API key in {API_KEY_ENV} is empty or only whitespace"
    ], result.stderr[-3000:]
