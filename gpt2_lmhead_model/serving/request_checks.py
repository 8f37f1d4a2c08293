"""Every rule a generation request's body must pass, in one place.

MAX 26.7.0's OpenAI layer answers many bad requests with a bare "Value
error." or "Missing JSON.", and silently replaces some values
(`max_tokens: 0`, `seed: 0`, `n: 2`). `check_request` refuses those first,
with a 4xx naming the field and the value; a body that passes reaches MAX
as sent. Type errors MAX's own schema names well (`temperature: "hot"`) are
left to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .install import MAX_TOP_LOGPROBS

ENABLE_ECHO_FLAG = "--enable-echo"

# name -> (low, high, low inclusive); the ranges MAX itself enforces.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, True),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, True),
    "frequency_penalty": (-2.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, True),
    "repetition_penalty": (0.0, math.inf, False),
}


class Endpoint(Enum):
    """The request layout a generating route takes."""

    COMPLETIONS = "completions"
    CHAT = "chat"


@dataclass(frozen=True)
class RequestError:
    """A refused request: the HTTP status and OpenAI's error fields."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        return json.dumps({"error": error}).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(body: bytes) -> dict[str, Any] | RequestError:
    """The body as a JSON object, or why it is not one."""
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
    except RecursionError:
        return RequestError(
            400, "request body is not valid JSON: arrays or objects nested too deep"
        )
    if not isinstance(request, dict):
        return RequestError(
            400, f"request body must be a JSON object, got {type(request).__name__}"
        )
    return request


def check_request(
    endpoint: Endpoint,
    body: bytes,
    served_models: Collection[str],
    echo_enabled: bool = False,
) -> dict[str, Any] | RequestError:
    """The parsed request, or the first thing wrong with it.

    `echo_enabled`: whether the server computes prompt log-probabilities
    (`--enable-echo`).
    """
    request = parse_json_object(body)
    if isinstance(request, RequestError):
        return request
    return _check_fields(endpoint, request, served_models, echo_enabled) or request


def _check_fields(
    endpoint: Endpoint,
    request: dict[str, Any],
    served_models: Collection[str],
    echo_enabled: bool,
) -> RequestError | None:
    chat = endpoint is Endpoint.CHAT
    logprobs = (
        _check_chat_logprobs(request)
        if chat
        else _check_completion_logprobs(request, echo_enabled)
    )
    rules = (
        _check_model(request, served_models),
        _check_input(request, chat),
        _check_token_limits(request, chat),
        _check_sampling(request),
        _check_stop_and_n(request),
        logprobs,
    )
    return next((error for error in rules if error is not None), None)


def _check_model(
    request: dict[str, Any], served_models: Collection[str]
) -> RequestError | None:
    model = request.get("model")
    if not (isinstance(model, str) and model and served_models):
        return None
    if model in served_models:
        return None
    served = ", ".join(repr(m) for m in served_models)
    return RequestError(
        404,
        f"model {model!r} is not served here; this server serves {served}",
        "model",
        "model_not_found",
    )


def _check_input(request: dict[str, Any], chat: bool) -> RequestError | None:
    if chat:
        if request.get("messages") == []:
            return RequestError(400, "messages must not be empty", "messages")
        return None
    if "prompt" not in request:
        return None
    prompt = request["prompt"]
    if prompt in ("", []):
        return RequestError(400, "prompt must not be empty", "prompt")
    if isinstance(prompt, list):
        for i, item in enumerate(prompt):
            if item in ("", []):
                return RequestError(400, f"prompt[{i}] must not be empty", "prompt")
    return None


def _check_token_limits(request: dict[str, Any], chat: bool) -> RequestError | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if not chat and name == "max_tokens" and value == 0:
            continue  # scoring with echo: `_check_completion_logprobs` decides
        if value is not None and (not is_int(value) or value < 1):
            return RequestError(
                400, f"{name} must be an integer >= 1, got {value!r}", name
            )
    return None


def _check_sampling(request: dict[str, Any]) -> RequestError | None:
    for name, (low, high, low_inclusive) in _RANGES.items():
        value = request.get(name)
        if value is None or not _is_number(value):
            continue  # absent, or a type error MAX reports itself
        above_low = value >= low if low_inclusive else value > low
        if not (above_low and value <= high):
            bounds = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
            return RequestError(400, f"{name} must be in {bounds}, got {value!r}", name)
    top_k = request.get("top_k")
    if top_k is not None and is_int(top_k) and top_k < -1:
        return RequestError(
            400, f"top_k must be -1 (off) or a positive integer, got {top_k}", "top_k"
        )
    seed = request.get("seed")
    if seed is not None and is_int(seed):
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
    return None


def _check_stop_and_n(request: dict[str, Any]) -> RequestError | None:
    stops = request.get("stop")
    if (isinstance(stops, list) and "" in stops) or stops == "":
        return RequestError(400, "stop strings must not be empty", "stop")
    n = request.get("n")
    if n is not None and n != 1:
        return RequestError(
            400, f"n={n!r} is not supported: one choice per request", "n"
        )
    return None


def _check_chat_logprobs(request: dict[str, Any]) -> RequestError | None:
    logprobs = request.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        return RequestError(
            400, f"logprobs must be true or false, got {logprobs!r}", "logprobs"
        )
    top = request.get("top_logprobs")
    if top is None:
        return None
    if not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
        return RequestError(
            400,
            f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}",
            "top_logprobs",
        )
    if not logprobs:
        return RequestError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    return None


def _check_completion_logprobs(
    request: dict[str, Any], echo_enabled: bool
) -> RequestError | None:
    logprobs = request.get("logprobs")
    if logprobs is not None and (
        not is_int(logprobs) or not 0 <= logprobs <= MAX_TOP_LOGPROBS
    ):
        return RequestError(
            400,
            f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] (the most "
            f"top log-probabilities this server returns per token), got "
            f"{logprobs!r}",
            "logprobs",
        )
    echo = request.get("echo")
    if echo is not None and not isinstance(echo, bool):
        return RequestError(400, f"echo must be true or false, got {echo!r}", "echo")
    if echo and logprobs and not echo_enabled:
        return RequestError(
            400,
            "echo with logprobs needs the log-probabilities of the prompt's "
            "tokens, which this server computes only when started with "
            f"{ENABLE_ECHO_FLAG} (max serve ... {ENABLE_ECHO_FLAG})",
            "echo",
        )
    if request.get("max_tokens") == 0 and not echo:
        return RequestError(
            400,
            "max_tokens must be an integer >= 1, got 0 (0 is accepted only "
            "with echo: true, to score the prompt)",
            "max_tokens",
        )
    if request.get("stream") and request.get("max_tokens") == 0:
        return RequestError(
            400,
            "max_tokens 0 is supported without streaming only; send stream: false",
            "max_tokens",
        )
    return None


def is_int(value: Any) -> bool:
    """A JSON integer (Python's `bool` is an `int`, JSON's is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
