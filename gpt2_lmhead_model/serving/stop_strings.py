"""Stop strings cut as OpenAI's API specifies: each choice's text ends
before the first stop string, streaming or not.

MAX 26.7.0's `/v1/completions` returns the stop string, and tokens
generated after it, in the text; the middleware passes every 200 answer
of a request with `stop` through `cut_response` or `cut_event`.
"""

from __future__ import annotations

import json
from typing import Any

from . import sse


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


def cut_response(body: bytes, stops: StopStrings, chat: bool) -> bytes:
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


def cut_event(event: bytes, stops: StopStrings, chat: bool) -> bytes | None:
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


def stop_strings_of(request: dict[str, Any]) -> StopStrings | None:
    """The request's `stop` (one string or a list), if it has any."""
    stop = request.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if isinstance(stops, list) and stops and all(isinstance(s, str) for s in stops):
        return StopStrings(stops)
    return None
