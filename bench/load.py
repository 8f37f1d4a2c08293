"""Client side of the serving benchmark: concurrent streaming completions.

Each stream is one `/v1/completions` request with `stream: true`; output
tokens are counted from the server's own `usage`, and times are taken at
each SSE chunk (MAX sends one chunk per generated token).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class StreamResult:
    start: float
    first_token: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    end: float = 0.0
    completion_tokens: int = 0

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.start

    @property
    def inter_token(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]


async def stream_completion(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    prompt: list[int],
    max_tokens: int,
) -> StreamResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = StreamResult(start=time.perf_counter())
    async with session.post(f"{url}/v1/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {await response.text()}")
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.completion_tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("text") for c in chunk.get("choices") or []):
                result.first_token = result.first_token or now
                result.chunk_times.append(now)
    result.end = time.perf_counter()
    return result


@dataclass
class LevelResult:
    concurrency: int
    wall_seconds: float
    output_tokens: int
    streams: list[StreamResult]

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds


async def _run_level(
    url: str, model: str, prompts: list[list[int]], max_tokens: int
) -> LevelResult:
    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
        start = time.perf_counter()
        streams = await asyncio.gather(
            *(stream_completion(s, url, model, p, max_tokens) for p in prompts)
        )
        wall = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in streams)
    return LevelResult(len(prompts), wall, tokens, list(streams))


def run_level(
    url: str, model: str, prompts: list[list[int]], max_tokens: int
) -> LevelResult:
    """All `prompts` sent at once; aggregate output tokens over wall time."""
    return asyncio.run(_run_level(url, model, prompts, max_tokens))
