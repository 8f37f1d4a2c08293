"""Client side of the failover test: a bounded load of greedy completions
through the load balancer, and streams read event by event."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests


@dataclass
class Answer:
    prompt: int
    started: float = 0.0
    text: str | None = None
    error: str | None = None
    replica: str | None = None


@dataclass
class Stream:
    """What a client saw of one streamed completion."""

    replica: str | None = None
    text: str = ""
    events: int = 0
    done: bool = False
    error: str | None = None
    first_event: threading.Event = field(default_factory=threading.Event)


def complete(url: str, model: str, prompt: str, max_tokens: int) -> requests.Response:
    return requests.post(
        f"{url}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout=120,
    )


def run_load(
    url: str,
    model: str,
    prompts: list[str],
    *,
    requests_total: int,
    concurrency: int,
    max_tokens: int,
    on_answer: Callable[[int], None] = lambda done: None,
) -> list[Answer]:
    """`requests_total` non-streaming completions, `concurrency` at a time,
    cycling through `prompts`; `on_answer(n)` after the n-th answer."""
    lock = threading.Lock()
    finished = [0]

    def one(i: int) -> Answer:
        answer = Answer(prompt=i % len(prompts), started=time.monotonic())
        try:
            r = complete(url, model, prompts[answer.prompt], max_tokens)
            answer.replica = r.headers.get("X-Replica")
            if r.status_code == 200:
                answer.text = r.json()["choices"][0]["text"]
            else:
                answer.error = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as e:
            answer.error = f"{type(e).__name__}: {e}"
        with lock:
            finished[0] += 1
            n = finished[0]
        on_answer(n)
        return answer

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(requests_total)))


def read_stream(
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    into: Stream,
) -> Stream:
    """Stream a greedy completion into `into`; a cut connection is recorded
    as `error`, a clean end as `done` (`data: [DONE]`)."""
    try:
        with requests.post(
            f"{url}/v1/completions",
            json={
                "model": model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            },
            stream=True,
            timeout=120,
        ) as r:
            into.replica = r.headers.get("X-Replica")
            if r.status_code != 200:
                into.error = f"HTTP {r.status_code}"
                return into
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                payload = line[len(b"data: ") :]
                if payload == b"[DONE]":
                    into.done = True
                    continue
                event = json.loads(payload)
                if "error" in event:
                    into.error = f"error event: {event['error']}"
                    continue
                into.text += event["choices"][0]["text"]
                into.events += 1
                into.first_event.set()
    except requests.RequestException as e:
        into.error = f"{type(e).__name__}: {e}"
    finally:
        into.first_event.set()
    return into
