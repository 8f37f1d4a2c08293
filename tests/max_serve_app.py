"""The app `max serve` would serve, built without a model: run as
`python -m tests.max_serve_app [--factory-moved]`, it prints what the
tests check as JSON.

It imports the package as `max serve` does (the launcher module first,
then MAX's custom-architecture import), then calls the launcher's app
factory as the launcher does, with settings from the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Every route MAX can build: all API types, and /metrics (telemetry on,
# metrics recorded in the API server's own event loop).
EVERY_ROUTE_ENV = {
    "MAX_SERVE_API_TYPES": '["openai", "sagemaker", "kserve", "responses"]',
    "MAX_SERVE_DISABLE_TELEMETRY": "0",
    "MAX_SERVE_METRIC_RECORDING_METHOD": "ASYNCIO",
}


def run_probe(*args: str, env: dict[str, str] | None = None) -> Any:
    """This module run in a fresh interpreter; `env` added to this one's."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    for name in ("GPT2_MAX_TRACEBACK", "GPT2_MAX_API_KEY", "GPT2_MAX_API_KEY_FILE"):
        environ.pop(name, None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tests.max_serve_app", *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=environ,
        check=False,
    )  # fmt: skip


def describe_app(factory_moved: bool = False) -> dict[str, Any]:
    """`factory_moved`: the launcher's app factory deleted first, as a MAX
    that moved it would be (the import is then expected to fail)."""
    from max._entrypoints.cli.serve import serve_api_and_model_worker as launcher
    from max.pipelines import PIPELINE_REGISTRY
    from max.serve.config import Settings

    if factory_moved:
        del launcher.fastapi_app
    PIPELINE_REGISTRY._import_custom_architectures(["gpt2_lmhead_model"])
    # Only now: importing any part of the package runs its install.
    from gpt2_lmhead_model.serving.install import is_installed

    # The factory reads the pipeline settings only once serving.
    app = launcher.fastapi_app(Settings(), SimpleNamespace(pipeline_config=None))
    return {
        "factory_installed": is_installed(launcher),
        # Outermost first, as Starlette stacks `user_middleware`.
        "middleware": [m.cls.__name__ for m in app.user_middleware],
        "routes": [
            {"path": path, "methods": sorted(getattr(route, "methods", None) or [])}
            for path, route in flat_routes(app.routes)
        ],
    }


def flat_routes(routes: Any) -> Any:
    """(path, route) for every route, routers included by FastAPI >= 0.140
    (which keeps them as lazy `_IncludedRouter` entries) opened up."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route.path, route
            continue
        for context in contexts():
            yield context.path or context.original_route.path, context.original_route


if __name__ == "__main__":
    json.dump(describe_app(factory_moved="--factory-moved" in sys.argv), sys.stdout)
