"""What `max serve` gains from loading this package.

- `request_checks`: every rule a generation request must pass;
- `stop_strings`: text cut before the first stop string;
- `logprobs_layout`: completions log-probabilities and `echo` in OpenAI's
  layout (`sse`: the streamed events it rewrites);
- `middleware`: the ASGI middleware that applies them to the app;
- `install`: every reach into MAX's private modules, and the hook that
  adds the middleware to the app `max serve` builds.
It is installed only inside `max serve`, when MAX imports this package.
"""

from __future__ import annotations

from typing import Any

from .install import patch_app_factory
from .middleware import OpenAIRequestChecks


def configure_app(app: Any) -> None:
    """What this package adds to the FastAPI app `max serve` builds."""
    app.add_middleware(OpenAIRequestChecks)


def install_into_max_serve() -> None:
    """Hooks into `max serve`, when MAX imports this package there; anywhere
    else this does nothing. A `max serve` it cannot hook into stops with
    one line naming what MAX moved."""
    patch_app_factory(configure_app)


__all__ = ["configure_app", "install_into_max_serve"]
