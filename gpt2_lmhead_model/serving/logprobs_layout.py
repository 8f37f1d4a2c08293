"""Log-probabilities on `/v1/completions` in OpenAI's layout.

MAX 26.7.0 computes the numbers (the architecture's
`compute_log_probabilities`) but its completions response carries only
`token_logprobs` and `top_logprobs`: `tokens` and `text_offset` are null,
`echo` does not echo the prompt, and the prompt's first token (which has
no log-probability) is simply missing. This module is what is forwarded to
MAX and how its response is rewritten to OpenAI's layout, used by the
middleware (`middleware.py`; what is refused is in `request_checks.py`):
- `echo` puts the prompt text before the completion, and with `logprobs`
  the prompt's tokens before the generated ones, the first one `null`;
- `tokens` and `text_offset` are filled in for every entry;
- `max_tokens: 0` with `echo` scores the prompt and generates nothing,
  as OpenAI's legacy API did: one token is generated and dropped.
Prompt log-probabilities need every position's logits, which the graph
returns only under `--enable-echo`; without it an `echo` request with
`logprobs` gets a 400 naming the flag.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import sse
from .request_checks import is_int


def needs_layout(request: dict[str, Any]) -> bool:
    """Whether a completions response must be rewritten to OpenAI's layout."""
    return bool(request.get("echo")) or request.get("logprobs") is not None


def forwarded_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request MAX gets: token ids asked for (to name and place every
    token), and one token to drop for `max_tokens: 0`."""
    forwarded = dict(request)
    forwarded["return_token_ids"] = True
    if request.get("logprobs") == 0:
        # OpenAI's 0: the chosen tokens' log-probabilities, no alternatives;
        # MAX's 0 means none at all.
        forwarded["logprobs"] = 1
    if request.get("max_tokens") == 0:
        forwarded["max_tokens"] = 1
    return forwarded


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes one token stands for (empty for ids past the tokenizer's)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    if int(token_id) in getattr(tokenizer, "added_tokens_decoder", {}):
        return piece.encode()
    decoder = _byte_decoder()
    return bytes(decoder[c] for c in piece if c in decoder)


def token_string(data: bytes) -> str:
    """A token as OpenAI names it: its text, or `bytes:\\xNN` if it is not
    whole UTF-8 characters."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


@dataclass
class TextCursor:
    """Character offsets of successive tokens in the text they decode to."""

    tokenizer: Any
    chars: int = 0
    decoder: Any = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    def advance(self, token_ids: Sequence[int]) -> tuple[list[str], list[int]]:
        """Names and start offsets of the next tokens."""
        names, offsets = [], []
        for token_id in token_ids:
            data = token_bytes(self.tokenizer, token_id)
            names.append(token_string(data))
            offsets.append(self.chars)
            self.chars += len(self.decoder.decode(data))
        return names, offsets


@dataclass
class ChoiceLayout:
    """One choice's state while its response (or its stream) is rewritten."""

    prompt_text: str
    cursor: TextCursor
    started: bool = False


class CompletionLogprobsLayout:
    """Rewrites MAX's completions responses into OpenAI's logprobs layout.

    `prompts` are the request's prompts as MAX splits them (one choice
    each); `decode` turns prompt token ids into text for echo.
    """

    def __init__(
        self,
        request: dict[str, Any],
        tokenizer: Any,
        decode: Callable[[Sequence[int]], str],
    ) -> None:
        self.echo = bool(request.get("echo"))
        self.logprobs = request.get("logprobs") is not None
        self.top_n = int(request.get("logprobs") or 0)
        self.keep_token_ids = bool(request.get("return_token_ids"))
        self.score_only = request.get("max_tokens") == 0
        # Text cut at a stop string leaves tokens past it to drop (whole
        # responses only: a stream's tokens are sent before the cut is known).
        self.cut_at_stop = bool(request.get("stop"))
        self.tokenizer = tokenizer
        self.decode = decode
        self.prompts = _prompts(request.get("prompt"))
        self.choices: dict[int, ChoiceLayout] = {}

    def _choice(self, index: int, prompt_ids: Sequence[int] | None) -> ChoiceLayout:
        if index not in self.choices:
            prompt = self.prompts[index] if index < len(self.prompts) else None
            if not isinstance(prompt, str):
                prompt = self.decode(list(prompt_ids or prompt or []))
            self.choices[index] = ChoiceLayout(
                prompt_text=prompt, cursor=TextCursor(self.tokenizer)
            )
        return self.choices[index]

    def response(self, body: bytes) -> bytes:
        """A whole (non-streaming) response body, rewritten."""
        try:
            response = json.loads(body)
        except ValueError:
            return body
        completion_tokens = 0
        for choice in response.get("choices") or []:
            completion_tokens += self._rewrite_choice(choice)
            if self.cut_at_stop:
                _drop_past_text(choice)
        usage = response.get("usage")
        if self.score_only and isinstance(usage, dict):
            usage["completion_tokens"] = completion_tokens
            usage["total_tokens"] = usage.get("prompt_tokens", 0) + completion_tokens
        return json.dumps(response).encode()

    def event(self, event: bytes) -> bytes:
        """One SSE event of a stream, rewritten."""
        chunk = sse.chunk_of(event)
        if chunk is None:
            return event
        for choice in chunk.get("choices") or []:
            self._rewrite_choice(choice)
        return sse.event_of(chunk)

    def _rewrite_choice(self, choice: dict[str, Any]) -> int:
        """Rewrites one choice (or one streamed piece of it) in place; the
        number of generated tokens it shows."""
        index = int(choice.get("index", 0))
        prompt_ids = choice.get("prompt_token_ids")
        token_ids = list(choice.get("token_ids") or [])
        layout = self._choice(index, prompt_ids)
        first = not layout.started and (prompt_ids is not None or bool(token_ids))
        text = choice.get("text") or ""
        if self.score_only:
            token_ids, text = [], ""
            choice["finish_reason"] = "length"
        entries = self._entries(choice.get("logprobs"))
        echoed: list[int] = []
        if first:
            layout.started = True
            if self.echo:
                text = layout.prompt_text + text
                echoed = list(prompt_ids or [])
        choice["text"] = text
        if self.logprobs:
            choice["logprobs"] = self._logprobs(layout, echoed, token_ids, entries)
        elif "logprobs" in choice:
            choice["logprobs"] = None
        if not self.keep_token_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
        elif self.score_only:
            choice["token_ids"] = []
        return len(token_ids)

    def _entries(
        self, logprobs: dict[str, Any] | None
    ) -> tuple[list[float | None], list[dict[str, float] | None]]:
        """MAX's (token_logprobs, top_logprobs); with `max_tokens: 0`, the
        dropped token's entry removed."""
        logprobs = logprobs or {}
        values = list(logprobs.get("token_logprobs") or [])
        tops = list(logprobs.get("top_logprobs") or [])
        if self.score_only and values:
            values, tops = values[:-1], tops[:-1]
        return values, tops

    def _logprobs(
        self,
        layout: ChoiceLayout,
        echoed: list[int],
        generated: list[int],
        entries: tuple[list[float | None], list[dict[str, float] | None]],
    ) -> dict[str, Any]:
        values, tops = entries
        ids = echoed + generated
        if echoed:
            # The first prompt token has nothing before it to predict it.
            values = [None, *values]
            tops = [None, *tops]
        if len(values) != len(ids):
            raise LogprobsMismatch(
                f"the model returned {len(values)} log-probabilities for "
                f"{len(ids)} tokens"
            )
        names, offsets = layout.cursor.advance(ids)
        if self.top_n == 0:  # only the chosen token, as OpenAI's logprobs: 0
            tops = [
                None if top is None else {name: value}
                for top, name, value in zip(tops, names, values, strict=True)
            ]
        return {
            "tokens": names,
            "token_logprobs": values,
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def _drop_past_text(choice: dict[str, Any]) -> None:
    """Removes the entries of tokens that start past the end of the text."""
    logprobs = choice.get("logprobs")
    if not logprobs:
        return
    end = len(choice.get("text") or "")
    keep = sum(
        1
        for offset, value in zip(
            logprobs["text_offset"], logprobs["token_logprobs"], strict=True
        )
        if offset < end or value is None
    )
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        logprobs[key] = logprobs[key][:keep]


class LogprobsMismatch(RuntimeError):
    """MAX returned a different number of log-probabilities than tokens."""


def _prompts(prompt: Any) -> list[Any]:
    """The request's prompts as MAX splits them: one string, strings, one
    token-id list, or token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
        return [prompt]
    return list(prompt) if isinstance(prompt, list) else []
