"""One stream in turns: ours (engine, then served where a server is up)
and llama.cpp alternate on each file, and each engine turn is held to
its own bandwidth bracket. No graph, server or peer runs: stand-ins
record the order they ran in."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import one_stream


class FakeServer:
    url, model = "http://127.0.0.1:1", "fake"

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def pause(self) -> None:
        self.calls.append(("pause",))

    def resume(self) -> None:
        self.calls.append(("resume",))


@pytest.fixture
def calls(monkeypatch) -> list:
    made: list = []
    speeds = iter([70.0, 50.0, 90.0])

    def run_level(url, model, prompts, max_tokens):
        made.append(("served", len(prompts), max_tokens))
        return type("Level", (), {"tokens_per_second": next(speeds)})()

    monkeypatch.setattr(one_stream, "run_level", run_level)
    monkeypatch.setattr(
        one_stream, "gguf_serving", lambda path: ("q8_0", Path(f"{path}.link"))
    )
    return made


def engine(calls: list, speeds: list[float]):
    it = iter(speeds)

    def measure(checkpoint, batch, **kwargs):
        calls.append(
            ("engine", kwargs.get("encoding", "float32"), kwargs["probe_threads"])
        )
        tps = next(it)
        return {"tokens_per_second": tps, "prefill_seconds": 0.2,
                "bandwidth": {"gbs": 50.0}}  # fmt: skip

    return measure


def llama_cpp(calls: list, speeds: list):
    it = iter(speeds)

    def measure(python, files, *, threads, prefill_tokens):
        (label,) = files
        calls.append(("llama.cpp", label, prefill_tokens))
        value = next(it)
        row = value if isinstance(value, dict) else {"tokens_per_second": value,
                                                       "prefill_seconds": 0.4}  # fmt: skip
        return {label: row}

    return measure


def run(calls, engine_speeds, llama_speeds, python=Path("py"), served=None):
    return one_stream.turns(
        Path("ckpt"),
        {"f32": Path("f32.gguf"), "q8_0": Path("q8_0.gguf")},
        python,
        why_not="not requested",
        threads=2,
        rounds={"f32": 3, "q8_0": 1},
        prefill_tokens=512,
        served=served,
        served_prompt=[1] * 32,
        max_tokens=128,
        bytes_per_token={"f32": 1e9, "q8_0": 0.25e9},
        engine_measure=engine(calls, engine_speeds),
        llama_cpp_measure=llama_cpp(calls, llama_speeds),
    )


def test_sides_alternate_within_each_turn(calls):
    server = FakeServer(calls)
    out = run(calls, [40, 30, 45, 160], [30, 50, 40, 150], served={"f32": server})
    # The server is paused but while it serves its own turn.
    assert calls[:11] == [
        ("pause",),
        ("engine", "float32", 2), ("resume",), ("served", 1, 128), ("pause",),
        ("llama.cpp", "f32", 512),
        ("engine", "float32", 2), ("resume",), ("served", 1, 128), ("pause",),
        ("llama.cpp", "f32", 512),
    ]  # fmt: skip
    assert calls[-1] == ("resume",)
    # No server of the q8_0 file: its turn is the engine and llama.cpp.
    assert calls[-3:-1] == [("engine", "q8_0", 2), ("llama.cpp", "q8_0", 512)]
    f32 = out["f32"]
    assert f32["ratio_of_medians"] == 40 / 40
    assert f32["served_ratio_of_medians"] == 70 / 40
    assert f32["prefill_speed_ratio"] == 0.4 / 0.2
    assert f32["bandwidth_share"]["shares"] == pytest.approx([0.8, 0.6, 0.9])
    assert out["q8_0"]["ratio_of_medians"] == 160 / 150
    assert out["q8_0"]["bandwidth_share"]["median"] == pytest.approx(0.8)


def test_without_llama_cpp_ours_runs_alone_and_says_why(calls):
    out = run(calls, [40, 30, 45, 160], [], python=None)
    assert [c[0] for c in calls] == ["engine"] * 4
    assert out["f32"]["llama.cpp"] == {"skipped": "not requested"}
    assert "ratio_of_medians" not in out["f32"]
    assert out["f32"]["ours_tokens_per_second"] == [40, 30, 45]


def test_a_file_llama_cpp_cannot_load_stops_its_turns(calls):
    out = run(calls, [40, 160], [{"skipped": "bad file"}, 150])
    assert out["f32"]["llama.cpp"] == {"skipped": "bad file"}
    assert out["q8_0"]["ratio_of_medians"] == 160 / 150


def test_q8_0_is_among_the_default_encodings():
    from bench.__main__ import DEFAULT_ENCODINGS

    assert "q8_0" in DEFAULT_ENCODINGS.split(",")
