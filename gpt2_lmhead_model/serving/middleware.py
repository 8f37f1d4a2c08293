"""The ASGI middleware `max serve`'s app gets: each generating route's
request checked first, then its answer rewritten.

For each route `routes.ROUTES` lists as generating (`/v1/completions`,
`/v1/chat/completions` and its SageMaker alias `/invocations`):
- the body is checked (`request_checks`); a bad one gets a 4xx naming the
  field and the value, and anything that passes reaches MAX as sent;
- with `stop`, each choice's text ends before the first stop string
  (`stop_strings`), streaming or not;
- completions log-probabilities and `echo` come back in OpenAI's layout
  (`logprobs_layout`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import install
from .logprobs_layout import (
    CompletionLogprobsLayout,
    LogprobsMismatch,
    forwarded_request,
    needs_layout,
)
from .request_checks import Endpoint, RequestError, check_request
from .routes import GENERATING_ROUTES, route_path
from .stop_strings import cut_event, cut_response, stop_strings_of

ASGIApp = Callable[..., Any]


class OpenAIRequestChecks:
    """ASGI middleware: `check_request` first, then stop strings enforced."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint = (
            GENERATING_ROUTES.get(route_path(scope))
            if scope["type"] == "http"
            else None
        )
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        limit = install.max_request_bytes(app)
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
            endpoint,
            b"".join(chunks),
            install.served_models(app),
            install.echo_enabled(app),
        )
        if isinstance(checked, RequestError):
            await send_error(send, checked)
            return
        chat = endpoint is Endpoint.CHAT
        streaming = bool(checked.get("stream"))
        if not chat and needs_layout(checked):
            # Outermost: echo must not be searched for stop strings.
            layout = CompletionLogprobsLayout(checked, *install.hf_tokenizer(app))
            send = _rewriting_send(send, layout.response, layout.event, streaming)
            forwarded = json.dumps(forwarded_request(checked)).encode()
            chunks = [forwarded]
            scope = _with_content_length(scope, len(forwarded))
        if stops := stop_strings_of(checked):
            send = _rewriting_send(
                send,
                lambda body: cut_response(body, stops, chat),
                lambda event: cut_event(event, stops, chat),
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
            except LogprobsMismatch as e:
                await send_error(send, RequestError(500, f"internal error: {e}"))
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


async def send_error(
    send: Any, error: RequestError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """`error` as a JSON answer in OpenAI's error layout."""
    body = error.body()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _with_content_length(scope: dict[str, Any], length: int) -> dict[str, Any]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


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
