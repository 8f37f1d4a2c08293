"""Every reach into MAX's private modules, in one place.

Written against MAX 26.7.0 (`WRITTEN_AGAINST`). What is read or patched:
- `max._entrypoints.cli.serve.serve_api_and_model_worker.fastapi_app`, the
  app factory `max serve`'s launcher calls by that module global: wrapped,
  so the app it returns gets this package's middleware;
- `max.pipelines.lib.log_probabilities._MAX_TOP_LOGPROBS`, the most top
  log-probabilities MAX returns per token;
- the FastAPI app's `state`: `settings.max_request_bytes`, `pipeline`
  (model name, LoRA queue, tokenizer) and `pipeline_config.model.enable_echo`;
- `max serve`'s click command (`serve`, its `--cascade` option), to know
  that this is `max serve` even if the launcher moved.
If MAX moves any of these, `max serve` stops at start-up with one line
naming the symbol and the MAX version, never a server without the checks.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any

import click

from ..model_config import CheckpointError

WRITTEN_AGAINST = "26.7.0"
LAUNCHER = "max._entrypoints.cli.serve.serve_api_and_model_worker"
APP_FACTORY = "fastapi_app"
LAUNCHER_SERVE = "serve_api_server_and_model_worker"
LOGPROBS_MODULE = "max.pipelines.lib.log_probabilities"
INSTALLED_MARK = "gpt2_request_checks"


class StartUpError(RuntimeError):
    """`max serve` cannot start as set up; the message is the one line shown."""


class ServingInstallError(StartUpError):
    """This package cannot hook into the `max serve` it runs in."""


def max_version() -> str:
    try:
        return importlib.metadata.version("max")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _moved(symbol: str) -> ServingInstallError:
    return ServingInstallError(
        f"gpt2_lmhead_model cannot install its request checks into max serve: "
        f"MAX {max_version()} has no {symbol} (this package was written against "
        f"MAX {WRITTEN_AGAINST}); refusing to serve without them"
    )


def _max_top_logprobs() -> int:
    symbol = f"{LOGPROBS_MODULE}._MAX_TOP_LOGPROBS"
    try:
        value = importlib.import_module(LOGPROBS_MODULE)._MAX_TOP_LOGPROBS
    except (ImportError, AttributeError):
        raise _moved(symbol) from None
    return int(value)


MAX_TOP_LOGPROBS = _max_top_logprobs()


# What the middleware reads from the app `max serve` built.


def max_request_bytes(app: Any) -> int:
    """MAX's body size limit (`MAX_SERVE_MAX_REQUEST_BYTES`); 0 is none."""
    return int(getattr(app.state.settings, "max_request_bytes", 0) or 0)


def served_models(app: Any) -> list[str]:
    """The model names requests may ask for: the model and its LoRAs."""
    pipeline = getattr(app.state, "pipeline", None)
    if pipeline is None:
        return []
    models = [pipeline.model_name]
    if lora_queue := getattr(pipeline, "lora_queue", None):
        models += lora_queue.list_loras()
    return models


def echo_enabled(app: Any) -> bool:
    """Whether the server computes prompt log-probabilities (`--enable-echo`)."""
    config = getattr(app.state, "pipeline_config", None)
    return bool(getattr(getattr(config, "model", None), "enable_echo", False))


def hf_tokenizer(app: Any) -> tuple[Any, Callable[[list[int]], str]]:
    """The served model's Hugging Face tokenizer, and its exact decode."""
    delegate = app.state.pipeline.tokenizer.delegate

    def decode(ids: list[int]) -> str:
        return str(
            delegate.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    return delegate, decode


# The hook itself.


def max_serve_is_starting() -> bool:
    """Whether this process is `max serve`'s API server starting up.

    MAX imports `--custom-architectures` packages in `max serve`'s command,
    after its launcher module and before it builds the app. The click
    command is checked as well, so a launcher MAX moved is noticed rather
    than taken for "not in `max serve`".
    """
    if LAUNCHER in sys.modules:
        return True
    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "serve":
        return False
    module = getattr(context.command.callback, "__module__", "") or ""
    return module.startswith("max.")


def patch_app_factory(configure_app: Callable[[Any], None]) -> None:
    """Has `configure_app` run on the app `max serve` builds, before it serves.

    Outside `max serve` this does nothing. Raises `ServingInstallError`
    when this is `max serve` but the factory cannot be wrapped.
    """
    if not max_serve_is_starting():
        return
    sys.excepthook = functools.partial(_one_line_start_errors, sys.excepthook)
    _refuse_cascade()
    launcher = _launcher()
    factory = getattr(launcher, APP_FACTORY, None)
    if not callable(factory):
        raise _moved(f"{LAUNCHER}.{APP_FACTORY}")
    if getattr(factory, INSTALLED_MARK, False):
        return
    serve = getattr(launcher, LAUNCHER_SERVE, None)
    code = getattr(serve, "__code__", None)
    if code is None or APP_FACTORY not in code.co_names:
        # The launcher no longer calls the factory by its module global, so
        # replacing that global would change nothing.
        raise _moved(f"{LAUNCHER}.{LAUNCHER_SERVE} calling {APP_FACTORY}")

    @functools.wraps(factory)
    def fastapi_app(*args: Any, **kwargs: Any) -> Any:
        app = factory(*args, **kwargs)
        configure_app(app)
        return app

    setattr(fastapi_app, INSTALLED_MARK, True)
    setattr(launcher, APP_FACTORY, fastapi_app)


def is_installed(launcher: ModuleType) -> bool:
    """Whether `launcher`'s app factory is this package's wrapper."""
    return bool(getattr(getattr(launcher, APP_FACTORY, None), INSTALLED_MARK, False))


def _launcher() -> ModuleType:
    try:
        return importlib.import_module(LAUNCHER)
    except ImportError:
        raise _moved(LAUNCHER) from None


def _refuse_cascade() -> None:
    """MAX's experimental Cascade server builds its own app, which the
    wrapped factory never sees: it would serve without the checks."""
    context = click.get_current_context(silent=True)
    if context is not None and context.params.get("cascade"):
        raise ServingInstallError(
            "max serve --cascade builds an app gpt2_lmhead_model's request "
            "checks do not reach; serve without --cascade"
        )


def _one_line_start_errors(
    default: Callable[..., Any],
    kind: type[BaseException],
    error: BaseException,
    tb: TracebackType | None,
) -> None:
    """Why `max serve` could not start, in one line instead of a traceback.

    Only start-up failures reach this hook: once serving, MAX answers a
    failed request itself. `GPT2_MAX_TRACEBACK=1` shows the traceback.
    """
    if os.environ.get("GPT2_MAX_TRACEBACK") or not isinstance(error, Exception):
        default(kind, error, tb)
        return
    print(
        f"error: {_cause(error)}\n(GPT2_MAX_TRACEBACK=1 shows the traceback)",
        file=sys.stderr,
    )


def _cause(error: BaseException) -> str:
    """This package's own error in the chain (MAX wraps a failed import of
    it in a ValueError), or the error itself."""
    link: BaseException | None = error
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        if isinstance(link, CheckpointError | StartUpError):
            return str(link)
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return f"{type(error).__name__}: {error}"
