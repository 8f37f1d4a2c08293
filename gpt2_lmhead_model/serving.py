"""What `max serve` gains from loading this package: clear request errors.

MAX 26.7.0 answers many bad OpenAI requests with a bare "Value error." or
"Missing JSON.", and accepts some values it then silently replaces
(`max_tokens: 0`, `seed: 0`, `n: 2`). The ASGI middleware here checks
`/v1/completions` and `/v1/chat/completions` bodies first and answers a 4xx
that names the field and the value; anything it passes reaches MAX as sent.
It is installed only inside `max serve`, when MAX imports this package.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
_LAUNCHER = "max._entrypoints.cli.serve.serve_api_and_model_worker"

# name -> (low, high, low inclusive); the ranges MAX itself enforces.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, True),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, True),
    "frequency_penalty": (-2.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, True),
    "repetition_penalty": (0.0, math.inf, False),
}


@dataclass(frozen=True)
class RequestError:
    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": self.code,
        }
        return json.dumps({"error": error}).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_request(
    path: str, body: bytes, served_models: Collection[str]
) -> RequestError | None:
    """The first thing wrong with a completions request body, if any."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return RequestError(
            400,
            f"request body is not valid UTF-8: byte 0x{body[e.start]:02x} "
            f"at offset {e.start}",
        )
    if not text.strip():
        return RequestError(400, "request body is empty; send a JSON object")
    try:
        request = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        return RequestError(
            400,
            f"request body is not valid JSON: {e.msg} at line {e.lineno} "
            f"column {e.colno}",
        )
    except ValueError as e:
        return RequestError(400, f"request body is not valid JSON: {e}")
    if not isinstance(request, dict):
        return RequestError(
            400, f"request body must be a JSON object, got {type(request).__name__}"
        )
    return _check_fields(path, request, served_models)


def _check_fields(
    path: str, request: dict[str, Any], served_models: Collection[str]
) -> RequestError | None:
    model = request.get("model")
    if isinstance(model, str) and model and model not in served_models:
        served = ", ".join(repr(m) for m in served_models)
        return RequestError(
            404,
            f"model {model!r} is not served here; this server serves {served}",
            "model",
            "model_not_found",
        )
    if path == COMPLETIONS and "prompt" in request:
        if error := _check_prompt(request["prompt"]):
            return error
    if path == CHAT_COMPLETIONS and request.get("messages") == []:
        return RequestError(400, "messages must not be empty", "messages")

    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            return RequestError(
                400, f"{name} must be an integer >= 1, got {value!r}", name
            )
    for name, (low, high, low_inclusive) in _RANGES.items():
        value = request.get(name)
        if value is None or not _is_number(value):
            continue  # absent, or a type error MAX reports itself
        above_low = value >= low if low_inclusive else value > low
        if not (above_low and value <= high):
            bounds = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
            return RequestError(400, f"{name} must be in {bounds}, got {value!r}", name)
    top_k = request.get("top_k")
    if top_k is not None and _is_int(top_k) and top_k < -1:
        return RequestError(
            400, f"top_k must be -1 (off) or a positive integer, got {top_k}", "top_k"
        )
    seed = request.get("seed")
    if seed is not None and _is_int(seed):
        if seed == 0:
            # MAX 26.7.0 reads `seed or random`, so 0 would be replaced.
            return RequestError(
                400,
                "seed 0 is not supported (this server would treat it as no "
                "seed); use a seed in [1, 2**64)",
                "seed",
            )
        if not 0 < seed < 2**64:
            return RequestError(400, f"seed must be in [1, 2**64), got {seed}", "seed")
    n = request.get("n")
    if n is not None and n != 1:
        return RequestError(
            400, f"n={n!r} is not supported: one choice per request", "n"
        )
    return None


def _check_prompt(prompt: Any) -> RequestError | None:
    if prompt in ("", []):
        return RequestError(400, "prompt must not be empty", "prompt")
    if isinstance(prompt, list):
        for i, item in enumerate(prompt):
            if item in ("", []):
                return RequestError(400, f"prompt[{i}] must not be empty", "prompt")
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


ASGIApp = Callable[..., Any]


class OpenAIRequestChecks:
    """ASGI middleware running `check_request` on completion requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in (COMPLETIONS, CHAT_COMPLETIONS)
        ):
            await self.app(scope, receive, send)
            return
        limit = getattr(scope["app"].state.settings, "max_request_bytes", 0)
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(chunks, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if more and 0 < limit < size:  # MAX's size limit answers this
                await self.app(scope, _replay(chunks, None, receive, more), send)
                return
        error = check_request(scope["path"], b"".join(chunks), _served(scope))
        if error is None:
            await self.app(scope, _replay(chunks, None, receive), send)
            return
        body = error.body()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _served(scope: dict[str, Any]) -> list[str]:
    pipeline = getattr(scope["app"].state, "pipeline", None)
    if pipeline is None:
        return []
    models = [pipeline.model_name]
    if lora_queue := getattr(pipeline, "lora_queue", None):
        models += lora_queue.list_loras()
    return models


def _replay(
    chunks: list[bytes],
    pending: dict[str, Any] | None,
    receive: Any,
    more: bool = False,
) -> Any:
    """A `receive` that hands the app the body already read, then the rest."""
    queue: list[dict[str, Any]] = []
    if chunks:
        queue.append(
            {"type": "http.request", "body": b"".join(chunks), "more_body": more}
        )
    if pending is not None:
        queue.append(pending)

    async def replay() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay


def install_request_checks() -> None:
    """Adds `OpenAIRequestChecks` to the app `max serve` is about to build.

    MAX imports `--custom-architectures` packages in `max serve`'s launcher
    before it builds the FastAPI app; anywhere else this does nothing.
    """
    launcher = sys.modules.get(_LAUNCHER)
    factory = getattr(launcher, "fastapi_app", None)
    if factory is None or getattr(factory, "gpt2_request_checks", False):
        return

    @functools.wraps(factory)
    def fastapi_app(*args: Any, **kwargs: Any) -> Any:
        app = factory(*args, **kwargs)
        app.add_middleware(OpenAIRequestChecks)
        return app

    fastapi_app.gpt2_request_checks = True  # type: ignore[attr-defined]
    launcher.fastapi_app = fastapi_app  # type: ignore[union-attr]
