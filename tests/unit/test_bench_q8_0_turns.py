"""The benchmark's Q8_0 rows: ours served and llama.cpp in turns on one
file (Q8_0 against CTranslate2 int8 is test_bench_ctranslate2). No server
starts: `max serve`, the load and llama.cpp are stand-ins that
record the order they ran in."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpt2_max.server
from bench import load, q8_0_turns

from .test_bench_report import results


class FakeServe:
    """Stands in for `MaxServe`; records its flags."""

    def __init__(self, calls: list, model_path, extra_args, *, log_path) -> None:
        calls.append(("serve", str(model_path), list(extra_args)))
        self.url, self.model = "http://127.0.0.1:1", "fake"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.fixture
def calls(monkeypatch) -> list:
    made: list = []
    speeds = iter([5.0, 100.0, 70.0, 90.0])  # warm-up, then one per turn

    def run_level(url, model, prompts, max_tokens):
        made.append(("ours", len(prompts), max_tokens))
        return type("Level", (), {"tokens_per_second": next(speeds)})()

    monkeypatch.setattr(
        gpt2_max.server, "MaxServe", lambda *a, **k: FakeServe(made, *a, **k)
    )
    monkeypatch.setattr(load, "run_level", run_level)
    return made


def _turns(calls: list, llama_speeds: list, python: Path | None = Path("py")):
    theirs = iter(llama_speeds)

    def measure(python, files, *, threads):
        calls.append(("llama.cpp", dict(files), threads))
        return {label: next(theirs) for label in files}

    return q8_0_turns.served_one_stream_in_turns(
        Path("ckpt"),
        Path("/m/ckpt-q8_0.gguf"),
        "float32",
        Path("/m/link/weights.gguf"),
        python,
        why_not="not requested",
        threads=2,
        rounds=3,
        prompt=list(range(32)),
        max_tokens=128,
        log_path=Path("log"),
        llama_cpp_measure=measure,
    )


def test_ours_served_and_llama_cpp_take_turns_on_the_same_file(calls):
    out = _turns(calls, [{"tokens_per_second": v} for v in (50.0, 100.0, 60.0)])
    serve, warm_up, *turns = calls
    assert serve == (
        "serve",
        "ckpt",
        [
            "--devices", "cpu",
            "--quantization-encoding", "float32",
            "--weight-path", "/m/link/weights.gguf",
        ],
    )  # fmt: skip
    assert warm_up == ("ours", 1, 4)
    assert [t[0] for t in turns] == ["ours", "llama.cpp"] * 3
    assert turns[0] == ("ours", 1, 128)
    assert turns[1] == ("llama.cpp", {"q8_0": Path("/m/ckpt-q8_0.gguf")}, 2)
    assert out["served"] == [100.0, 70.0, 90.0]
    assert out["llama.cpp"] == [50.0, 100.0, 60.0]
    assert out["served_ratio_of_medians"] == 90.0 / 60.0
    data = {**results(), q8_0_turns.RESULTS_KEY: out}
    table = q8_0_turns.table(data)
    assert "ours served 100.0, 70.0, 90.0 tok/s" in table
    assert "llama.cpp in process 50.0, 100.0, 60.0" in table
    assert "ratio of the medians 1.50" in table


def test_without_llama_cpp_no_server_starts(calls):
    out = _turns(calls, [], python=None)
    assert calls == []
    assert out["skipped"] == "not requested"
    assert "Q8_0 turns: skipped (not requested)" in q8_0_turns.table(
        {q8_0_turns.RESULTS_KEY: out}
    )


def test_a_llama_cpp_turn_that_fails_skips_the_turns(calls):
    out = _turns(calls, [{"skipped": "llama.cpp child failed: boom"}])
    assert out["skipped"] == "llama.cpp child failed: boom"
    assert "served" not in out


def test_q8_0_is_measured_by_default():
    from bench.__main__ import DEFAULT_ENCODINGS

    assert q8_0_turns.ENCODING in DEFAULT_ENCODINGS.split(",")
