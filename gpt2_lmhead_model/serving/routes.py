"""Which routes of `max serve`'s app this server opens: a list of what is
allowed, so a route a later MAX adds is refused until someone looks at it.

Every route MAX 26.7.0 can build (any `MAX_SERVE_API_TYPES`, telemetry on
or off) is listed with its access:
- `PROBE`: open to everyone, with or without an API key (load balancers
  and orchestrators probe without credentials);
- `SERVED`: open, behind the API key when one is set;
- `ADMIN`: operator routes, closed unless `GPT2_MAX_ADMIN_ROUTES=1`, and
  then behind the API key when one is set;
- `CLOSED`: never served here, with the reason given to the client.
A path not listed gets a 404, whatever MAX would have answered. Every
route that generates text names the request layout it takes, so that the
middleware holds it to the same checks (`GENERATING_ROUTES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .request_checks import Endpoint

ADMIN_ROUTES_ENV = "GPT2_MAX_ADMIN_ROUTES"


class Access(Enum):
    PROBE = "probe"
    SERVED = "served"
    ADMIN = "admin"
    CLOSED = "closed"


@dataclass(frozen=True)
class Route:
    """One path template of the app (`{name}` is one path segment)."""

    path: str
    methods: frozenset[str]
    access: Access
    why: str = ""
    generates: Endpoint | None = None
    mount: bool = False  # a mounted app: every path below it too

    def matches(self, path: str) -> bool:
        return _pattern(self.path, self.mount).fullmatch(path) is not None


def _route(
    path: str, method: str, access: Access, why: str = "", **kwargs: Any
) -> Route:
    return Route(path, frozenset({method}), access, why, **kwargs)


GET, POST = "GET", "POST"
_DOCS = (
    "MAX's generated API pages describe routes and request fields this "
    "server refuses (and Swagger UI loads its scripts from a CDN); OpenAI's "
    "API reference describes /v1/completions and /v1/chat/completions"
)
_NOT_TEXT = "GPT-2 generates text only"
_UNCHECKED = (
    "its requests are not held to this server's request checks; use "
    "/v1/completions or /v1/chat/completions"
)
_KSERVE = "the KServe v2 protocol is not served here: " + _UNCHECKED

ROUTES: tuple[Route, ...] = (
    _route("/health", GET, Access.PROBE),
    _route("/v1/health", GET, Access.PROBE),
    _route("/ping", GET, Access.PROBE),  # SageMaker's health check
    _route("/version", GET, Access.PROBE),
    _route("/v1/completions", POST, Access.SERVED, generates=Endpoint.COMPLETIONS),
    _route("/v1/chat/completions", POST, Access.SERVED, generates=Endpoint.CHAT),
    # SageMaker's alias of chat completions: the same checks.
    _route("/invocations", POST, Access.SERVED, generates=Endpoint.CHAT),
    _route("/v1/models", GET, Access.SERVED),
    _route("/v1/models/{model_id}", GET, Access.SERVED),
    _route("/reset_prefix_cache", POST, Access.ADMIN),
    _route("/v1/load_lora_adapter", POST, Access.ADMIN),
    _route("/v1/unload_lora_adapter", POST, Access.ADMIN),
    _route("/max_internal/eplb_stats", GET, Access.ADMIN),
    _route("/max_internal/eplb_stats_reset", POST, Access.ADMIN),
    _route("/metrics", GET, Access.ADMIN, mount=True),
    _route("/v1/embeddings", POST, Access.CLOSED, _NOT_TEXT + ", not embeddings"),
    _route("/v1/audio/speech", POST, Access.CLOSED, _NOT_TEXT + ", not speech"),
    _route("/v1/audio/{audio_id}/content", GET, Access.CLOSED, _NOT_TEXT),
    _route("/v1/images/{image_id}/content", GET, Access.CLOSED, _NOT_TEXT),
    _route("/v1/videos/{video_id}/content", GET, Access.CLOSED, _NOT_TEXT),
    _route("/v1/decisions", POST, Access.CLOSED, _UNCHECKED),
    _route("/v1/systemone", POST, Access.CLOSED, _UNCHECKED),
    _route("/v1/responses", POST, Access.CLOSED, _UNCHECKED),
    _route("/v2/health/live", GET, Access.CLOSED, _KSERVE),
    _route("/v2/health/ready", GET, Access.CLOSED, _KSERVE),
    _route(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        POST,
        Access.CLOSED,
        _KSERVE,
    ),
    _route("/openapi.json", GET, Access.CLOSED, _DOCS),
    _route("/docs", GET, Access.CLOSED, _DOCS),
    _route("/docs/oauth2-redirect", GET, Access.CLOSED, _DOCS),
    _route("/redoc", GET, Access.CLOSED, _DOCS),
)

GENERATING_ROUTES: dict[str, Endpoint] = {
    route.path: route.generates for route in ROUTES if route.generates is not None
}


def find_route(path: str) -> Route | None:
    """The listed route `path` (as the app's router sees it) belongs to."""
    return next((route for route in ROUTES if route.matches(path)), None)


def route_path(scope: dict[str, Any]) -> str:
    """The request's path as Starlette's router matches it: without the
    app's `root_path`, when it is served under one."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path != root and path[len(root)] == "/":
        return path[len(root) :]
    return path


_PATTERNS: dict[tuple[str, bool], re.Pattern[str]] = {}


def _pattern(template: str, mount: bool) -> re.Pattern[str]:
    key = (template, mount)
    if key not in _PATTERNS:
        parts = re.split(r"\{[^/{}]+\}", template)
        regex = "[^/]+".join(re.escape(part) for part in parts)
        _PATTERNS[key] = re.compile(regex + ("(?:/.*)?" if mount else ""))
    return _PATTERNS[key]
