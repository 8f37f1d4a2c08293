"""The outermost ASGI middleware: who may use which route.

In order, for every request:
1. a probe (`/health`, `/v1/health`, `/ping`, `/version`) is answered by
   MAX, key or not;
2. with an API key set, anything else without `Authorization: Bearer
   <key>` gets a 401 in OpenAI's error layout (before the route is looked
   at, so a client without the key learns nothing about which exist);
3. a path `routes.ROUTES` does not list gets a 404, a closed route a 404
   naming why, an admin route a 403 naming `GPT2_MAX_ADMIN_ROUTES=1` unless
   that is set, a listed route asked with another method a 405;
4. the rest reaches the request checks (`middleware.py`) and MAX.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api_key import API_KEY_ENV, bearer_token, has_key, load_api_key
from .install import StartUpError
from .middleware import ASGIApp, send_error
from .request_checks import RequestError
from .routes import ADMIN_ROUTES_ENV, Access, Route, find_route, route_path

logger = logging.getLogger("gpt2_lmhead_model")


@dataclass(frozen=True)
class AccessPolicy:
    """The API key (None: everyone who can reach the server is trusted),
    and whether the admin routes are open."""

    api_key: str | None = None
    admin_routes: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AccessPolicy:
        admin = environ.get(ADMIN_ROUTES_ENV, "0")
        if admin not in ("0", "1"):
            raise StartUpError(f"{ADMIN_ROUTES_ENV}={admin!r} must be 1 or 0")
        policy = cls(load_api_key(environ), admin == "1")
        if policy.admin_routes and policy.api_key is None:
            logger.warning(
                "%s=1 without %s: the admin routes are open to everyone who "
                "can reach this server",
                ADMIN_ROUTES_ENV,
                API_KEY_ENV,
            )
        return policy


class RouteGuard:
    """ASGI middleware: the API key and the list of open routes."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # MAX serves no websockets
            await send({"type": "websocket.close", "code": 1008})
            return
        path = route_path(scope)
        route = find_route(path)
        refusal = self._refusal(scope, path, route)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"www-authenticate", b"Bearer")] if refusal.status == 401 else []
        await send_error(send, refusal, headers)

    def _refusal(
        self, scope: dict[str, Any], path: str, route: Route | None
    ) -> RequestError | None:
        key = self.policy.api_key
        probe = route is not None and route.access is Access.PROBE
        if key is not None and not probe and not has_key(scope["headers"], key):
            return _unauthorized(scope["headers"])
        method = scope["method"]
        if route is None:
            return RequestError(
                404, f"{path} is not a route this server serves", None, "not_found"
            )
        if method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            return RequestError(
                405,
                f"{method} is not allowed on {route.path}; use {allowed}",
                None,
                "method_not_allowed",
            )
        if route.access is Access.CLOSED:
            return RequestError(
                404, f"{route.path} is closed on this server: {route.why}", None,
                "route_closed",
            )  # fmt: skip
        if route.access is Access.ADMIN and not self.policy.admin_routes:
            return RequestError(
                403,
                f"{route.path} is an admin route, closed by default; start the "
                f"server with {ADMIN_ROUTES_ENV}=1 to open the admin routes "
                f"(behind the API key when {API_KEY_ENV} is set)",
                None,
                "route_closed",
                "permission_error",
            )
        return None


def _unauthorized(headers: list[tuple[bytes, bytes]]) -> RequestError:
    sent = [v for k, v in headers if k.lower() == b"authorization"]
    if not sent:
        why = "no API key: send the header Authorization: Bearer <key>"
    elif bearer_token(headers) is None:
        why = "the Authorization header must be one 'Bearer <key>'"
    else:
        why = "incorrect API key"
    return RequestError(401, why, None, "invalid_api_key")
