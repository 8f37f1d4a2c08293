"""The `data:` events of MAX's streaming (server-sent events) answers, as
the serving middleware reads and rewrites them."""

from __future__ import annotations

import json
from typing import Any

DATA = b"data: "


def chunk_of(event: bytes) -> dict[str, Any] | None:
    """The JSON chunk an event carries; None for `[DONE]`, comments or
    anything unparsable, which the middleware passes through unchanged."""
    if not event.startswith(DATA) or event[len(DATA) :].strip() == b"[DONE]":
        return None
    try:
        chunk = json.loads(event[len(DATA) :])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def event_of(chunk: dict[str, Any]) -> bytes:
    return DATA + json.dumps(chunk).encode()
