"""What `max serve` gains from loading this package.

MAX 26.7.0's OpenAI layer answers many bad requests with a bare "Value
error." or "Missing JSON.", silently replaces some values (`max_tokens: 0`,
`seed: 0`, `n: 2`), and on `/v1/completions` returns the stop string, and
tokens generated after it, in the text. The ASGI middleware here fixes both
for `/v1/completions` and `/v1/chat/completions`:
- request bodies are checked first, and a bad one gets a 4xx naming the
  field and the value; anything that passes reaches MAX as sent;
- with `stop`, each choice's text ends before the first stop string, as
  OpenAI's API specifies, streaming or not;
- `/v1/completions` log-probabilities and `echo` come back in OpenAI's
  layout (`logprobs_api.py`).
It is installed only inside `max serve`, when MAX imports this package.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import logprobs_api, sse
from .model_config import CheckpointError

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
    path: str,
    body: bytes,
    served_models: Collection[str],
    echo_enabled: bool = False,
) -> dict[str, Any] | RequestError:
    """The parsed request, or the first thing wrong with it.

    `echo_enabled`: whether the server computes prompt log-probabilities
    (`--enable-echo`).
    """
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
    return _check_fields(path, request, served_models, echo_enabled) or request


def _check_fields(
    path: str,
    request: dict[str, Any],
    served_models: Collection[str],
    echo_enabled: bool,
) -> RequestError | None:
    model = request.get("model")
    if (
        isinstance(model, str)
        and model
        and served_models
        and model not in served_models
    ):
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
        if path == COMPLETIONS and name == "max_tokens" and value == 0:
            continue  # scoring with echo: `logprobs_api` decides
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
    stops = request.get("stop")
    if (isinstance(stops, list) and "" in stops) or stops == "":
        return RequestError(400, "stop strings must not be empty", "stop")
    n = request.get("n")
    if n is not None and n != 1:
        return RequestError(
            400, f"n={n!r} is not supported: one choice per request", "n"
        )
    problem = logprobs_api.check_logprobs_fields(
        path == CHAT_COMPLETIONS, request, echo_enabled
    )
    return RequestError(*problem) if problem else None


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


class StopStrings:
    """Ends each choice's text before the first stop string.

    Streaming text is held back by `len(longest stop) - 1` characters, so a
    stop string split across chunks is still caught before any of it is
    sent.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max(len(s) for s in stops) - 1
        self.pending: dict[int, str] = {}
        self.stopped: set[int] = set()

    def cut(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def whole(self, text: str) -> tuple[str, bool]:
        at = self.cut(text)
        return (text, False) if at is None else (text[:at], True)

    def stream(self, index: int, text: str, last: bool) -> tuple[str, bool]:
        """Text to send now for choice `index`, and whether it just stopped."""
        if index in self.stopped:
            return "", False
        pending = self.pending.get(index, "") + text
        at = self.cut(pending)
        if at is not None:
            self.stopped.add(index)
            self.pending.pop(index, None)
            return pending[:at], True
        if last or self.hold == 0:
            self.pending[index] = ""
            return pending, False
        keep = min(self.hold, len(pending))
        self.pending[index] = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False


def _text_slot(
    choice: dict[str, Any], chat: bool, streaming: bool
) -> tuple[dict[str, Any], str] | None:
    """Where a choice's text lives: completions `text`, chat `message`/`delta`."""
    if not chat:
        return choice, "text"
    holder = choice.get("delta" if streaming else "message")
    return (holder, "content") if isinstance(holder, dict) else None


def _cut_response(body: bytes, stops: StopStrings, chat: bool) -> bytes:
    try:
        response = json.loads(body)
    except ValueError:
        return body  # not a completion: nothing to cut
    for choice in response.get("choices") or []:
        slot = _text_slot(choice, chat, streaming=False)
        if slot is None or not isinstance(slot[0].get(slot[1]), str):
            continue
        text, stopped = stops.whole(slot[0][slot[1]])
        if stopped:
            slot[0][slot[1]] = text
            choice["finish_reason"] = "stop"
    return json.dumps(response).encode()


def _cut_event(event: bytes, stops: StopStrings, chat: bool) -> bytes | None:
    """One SSE event with stop strings applied; None drops it."""
    chunk = sse.chunk_of(event)
    if chunk is None:
        return event  # not a completion chunk: nothing to cut
    choices = chunk.get("choices") or []
    kept = []
    for choice in choices:
        index = int(choice.get("index", 0))
        if index in stops.stopped:
            continue  # generated after its stop string: not the user's text
        slot = _text_slot(choice, chat, streaming=True)
        last = choice.get("finish_reason") is not None
        if slot is not None:
            holder, key = slot
            text = holder.get(key)
            # A final chunk without text still releases what was held back.
            if isinstance(text, str) or last:
                sent, stopped = stops.stream(index, text or "", last)
                if sent or isinstance(text, str):
                    holder[key] = sent
                if stopped:
                    choice["finish_reason"] = "stop"
        kept.append(choice)
    if choices and not kept:
        return None
    chunk["choices"] = kept
    return sse.event_of(chunk)


class OpenAIRequestChecks:
    """ASGI middleware: `check_request` first, then stop strings enforced."""

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
        checked = check_request(
            scope["path"], b"".join(chunks), _served(scope), _echo_enabled(scope)
        )
        if isinstance(checked, RequestError):
            await _send_error(send, checked)
            return
        chat = scope["path"] == CHAT_COMPLETIONS
        streaming = bool(checked.get("stream"))
        if not chat and logprobs_api.needs_layout(checked):
            # Outermost: echo must not be searched for stop strings.
            layout = logprobs_api.CompletionLogprobsLayout(checked, *_tokenizer(scope))
            send = _rewriting_send(send, layout.response, layout.event, streaming)
            forwarded = json.dumps(logprobs_api.forwarded_request(checked)).encode()
            chunks = [forwarded]
            scope = _with_content_length(scope, len(forwarded))
        stop = checked.get("stop")
        stops = [stop] if isinstance(stop, str) else stop
        if isinstance(stops, list) and stops and all(isinstance(s, str) for s in stops):
            cut = StopStrings(stops)
            send = _rewriting_send(
                send,
                functools.partial(_cut_response, stops=cut, chat=chat),
                functools.partial(_cut_event, stops=cut, chat=chat),
                streaming,
            )
        await self.app(scope, _replay(chunks, None, receive), send)


def _rewriting_send(
    send: Any,
    rewrite_body: Callable[[bytes], bytes],
    rewrite_event: Callable[[bytes], bytes | None],
    streaming: bool,
) -> Any:
    """A `send` that rewrites a 200's JSON body, or each SSE event of it
    (an event rewritten to None is dropped)."""
    start: dict[str, Any] | None = None
    body = bytearray()

    async def send_cut(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            if streaming or message["status"] != 200:
                await send(message)
            return
        if (
            message["type"] != "http.response.body"
            or start is None
            or start["status"] != 200
        ):
            await send(message)
            return
        body.extend(message.get("body", b""))
        more = message.get("more_body", False)
        if not streaming:
            if more:
                return
            try:
                cut = rewrite_body(bytes(body))
            except logprobs_api.LogprobsMismatch as e:
                await _send_error(send, RequestError(500, f"internal error: {e}"))
                return
            headers = [
                (k, v) for k, v in start["headers"] if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(cut)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": cut})
            return
        events = bytes(body).split(b"\n\n")
        body[:] = b"" if not more else events.pop()
        out = [
            e for e in (rewrite_event(e) for e in events if e.strip()) if e is not None
        ]
        payload = b"".join(e + b"\n\n" for e in out)
        if payload or not more:
            await send(
                {"type": "http.response.body", "body": payload, "more_body": more}
            )

    return send_cut


async def _send_error(send: Any, error: RequestError) -> None:
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


def _echo_enabled(scope: dict[str, Any]) -> bool:
    config = getattr(scope["app"].state, "pipeline_config", None)
    return bool(getattr(getattr(config, "model", None), "enable_echo", False))


def _tokenizer(scope: dict[str, Any]) -> tuple[Any, Callable[[list[int]], str]]:
    """The served model's Hugging Face tokenizer, and its exact decode."""
    delegate = scope["app"].state.pipeline.tokenizer.delegate

    def decode(ids: list[int]) -> str:
        return str(
            delegate.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    return delegate, decode


def _with_content_length(scope: dict[str, Any], length: int) -> dict[str, Any]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


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


def install_into_max_serve() -> None:
    """Hooks into `max serve`, when MAX imports this package there.

    MAX imports `--custom-architectures` packages in `max serve`'s launcher
    before it builds the FastAPI app; anywhere else this does nothing. Adds
    `OpenAIRequestChecks` to the app and reports load errors in one line.
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
    sys.excepthook = functools.partial(_one_line_load_errors, sys.excepthook)


def _one_line_load_errors(
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
    cause = (
        str(error)
        if isinstance(error, CheckpointError)
        else f"{kind.__name__}: {error}"
    )
    print(
        f"error: {cause}\n(GPT2_MAX_TRACEBACK=1 shows the traceback)",
        file=sys.stderr,
    )
