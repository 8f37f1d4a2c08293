"""What `max serve` gains from loading this package.

- `request_checks`: every rule a generation request must pass;
- `stop_strings`: text cut before the first stop string;
- `logprobs_layout`: completions log-probabilities and `echo` in OpenAI's
  layout (`sse`: the streamed events it rewrites);
- `middleware`: the ASGI middleware that applies them to the app;
- `guard`: the outermost middleware: the optional API key (`api_key`) and
  the list of routes this server opens (`routes`);
- `install`: every reach into MAX's private modules, and the hook that
  adds the middleware to the app `max serve` builds.
It is installed only inside `max serve`, when MAX imports this package.
"""

from __future__ import annotations

import os
from typing import Any

from .guard import AccessPolicy, RouteGuard
from .install import patch_app_factory
from .middleware import OpenAIRequestChecks


def configure_app(app: Any) -> None:
    """What this package adds to the FastAPI app `max serve` builds.

    The access settings are read here, before MAX loads the model, so a
    bad one stops the server at once.
    """
    policy = AccessPolicy.from_environ(os.environ)
    app.add_middleware(OpenAIRequestChecks)
    # Added last, so outermost: a refused request reaches nothing else.
    app.add_middleware(RouteGuard, policy=policy)


def install_into_max_serve() -> None:
    """Hooks into `max serve`, when MAX imports this package there; anywhere
    else this does nothing. A `max serve` it cannot hook into stops with
    one line naming what MAX moved."""
    patch_app_factory(configure_app)


__all__ = ["configure_app", "install_into_max_serve"]
