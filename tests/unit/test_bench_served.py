"""Served levels in turns: every server measured at every level in each
round, the others paused meanwhile, each figure the median of its turns."""

from __future__ import annotations

from bench import served
from bench.load import LevelResult, StreamResult


class FakeServer:
    def __init__(self, name: str, state: dict) -> None:
        self.name, self.state = name, state
        self.url, self.model = name, "fake"

    def pause(self) -> None:
        self.state[self.name] = "paused"

    def resume(self) -> None:
        self.state[self.name] = "running"


class Tokenizer:
    def __call__(self, text: str):
        return type("Ids", (), {"input_ids": list(range(len(text.split())))})()


def test_each_server_runs_alone_and_figures_are_medians_of_turns(monkeypatch):
    state = {"a": "running", "b": "running"}
    servers = {name: FakeServer(name, state) for name in state}
    speeds = {"a": iter([1, 10, 30, 20, 100, 300, 200]),
              "b": iter([1, 5, 6, 7, 50, 60, 70])}  # fmt: skip
    seen = []

    def run_level(url, model, prompts, max_tokens):
        if max_tokens != 2:  # the TTFT probes run after the levels
            seen.append((url, dict(state)))
        stream = StreamResult(start=0.0, first_token=0.1, chunk_times=[0.1, 0.2])
        wall = 1 / next(speeds[url]) if max_tokens != 2 else 1.0
        return LevelResult(len(prompts), wall, len(prompts), [stream] * len(prompts))

    monkeypatch.setattr(served, "run_level", run_level)
    hf_states = []
    result = served.levels_in_turns(
        servers, Tokenizer(), [1, 4], 8, 3, [],
        transformers=lambda batch: hf_states.append(dict(state)) or
        {"tokens_per_second": float(len(batch))},
    )  # fmt: skip
    # The warm-ups, then each measurement with the other server paused.
    for url, states in seen[2:]:
        other = "b" if url == "a" else "a"
        assert states[url] == "running" and states[other] == "paused"
    assert all(s == {"a": "paused", "b": "paused"} for s in hf_states)
    assert state == {"a": "running", "b": "running"}
    # a's speeds in measuring order: level 1, level 4, level 1, ... (x the
    # level's streams): its level-1 turns 10, 20, 300, median 20.
    a_levels = {lv["concurrency"]: lv for lv in result["a"]["levels"]}
    assert a_levels[1]["turns"] == [10.0, 20.0, 300.0]
    assert a_levels[1]["tokens_per_second"] == 20.0
    assert a_levels[4]["turns"] == [120.0, 400.0, 800.0]
    assert result["transformers"]["4"]["turns"] == [4.0, 4.0, 4.0]
