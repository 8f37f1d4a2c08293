"""CTranslate2 as a bench peer: its turns with ours served, its floors and
table lines, the conversion's reuse and a child that fails. No server or
CTranslate2 starts: `max serve`, the load and the peer are stand-ins that
record the order they ran in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gpt2_max.server
from bench import (
    ctranslate2_child,
    ctranslate2_turns,
    floors,
    load,
    peer_ctranslate2,
)

from .test_bench_report import results


class FakeServe:
    """Stands in for `MaxServe`; records its flags."""

    def __init__(self, calls: list, model_path, extra_args, *, log_path) -> None:
        calls.append(("serve", str(model_path), list(extra_args)))
        self.calls = calls
        self.url, self.model = "http://127.0.0.1:1", "fake"

    def pause(self) -> None:
        self.calls.append(("pause",))

    def resume(self) -> None:
        self.calls.append(("resume",))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


PROMPTS = [list(range(i, i + 32)) for i in range(32)]


@pytest.fixture
def calls(monkeypatch) -> list:
    made: list = []
    # warm-up, then per turn: 1 stream, 32 streams
    speeds = iter([5.0, 100.0, 900.0, 70.0, 1100.0, 90.0, 1000.0])

    def run_level(url, model, prompts, max_tokens):
        made.append(("ours", len(prompts), max_tokens))
        return type("Level", (), {"tokens_per_second": next(speeds)})()

    monkeypatch.setattr(
        gpt2_max.server, "MaxServe", lambda *a, **k: FakeServe(made, *a, **k)
    )
    monkeypatch.setattr(load, "run_level", run_level)
    return made


def _turns(calls: list, theirs: list[dict]):
    rows = iter(theirs)

    def measure(
        python, model_dir, compute_type, prompts, max_tokens, threads, *, batches
    ):
        calls.append(
            ("ct2", model_dir, compute_type, len(prompts), max_tokens, batches)
        )
        return next(rows)

    return ctranslate2_turns.served_in_turns(
        Path("ckpt"),
        ["--devices", "cpu", "--quantization-encoding", "float32"],
        Path("py"),
        Path("/m/ckpt-ct2-int8"),
        "int8",
        prompts=PROMPTS,
        max_tokens=128,
        threads=2,
        rounds=3,
        log_path=Path("log"),
        ct2_measure=measure,
    )


def _row(one: float, many: float) -> dict:
    return {"1": {"tokens_per_second": one}, "32": {"tokens_per_second": many}}


def test_ours_and_ctranslate2_take_turns_at_each_stream_count(calls):
    out = _turns(calls, [_row(50, 1000), _row(100, 800), _row(60, 1200)])
    serve, warm_up, *turns = calls
    assert serve[2] == ["--devices", "cpu", "--quantization-encoding", "float32"]
    assert warm_up == ("ours", 2, 4)
    # The server is paused (SIGSTOP) through each CTranslate2 turn only.
    assert [t[0] for t in turns] == ["ours", "ours", "pause", "ct2", "resume"] * 3
    assert turns[:2] == [("ours", 1, 128), ("ours", 32, 128)]
    assert turns[3] == ("ct2", Path("/m/ckpt-ct2-int8"), "int8", 32, 128, (1, 32))
    assert out["ours"] == {"1": [100.0, 70.0, 90.0], "32": [900.0, 1100.0, 1000.0]}
    assert out["ctranslate2"] == {"1": [50, 100, 60], "32": [1000, 800, 1200]}
    assert out["ratio_of_medians"] == {"1": 90.0 / 60, "32": 1000.0 / 1000}
    assert out["compute_type"] == "int8"


def test_a_ctranslate2_turn_that_fails_skips_the_turns(calls):
    out = _turns(calls, [{"skipped": "CTranslate2 measure failed: boom"}])
    assert out == {
        "compute_type": "int8",
        "skipped": "CTranslate2 measure failed: boom",
    }


def test_too_few_prompts_for_the_streams_is_an_error(calls):
    with pytest.raises(ValueError, match="32 streams need as many prompts, got 4"):
        ctranslate2_turns.served_in_turns(
            Path("c"), [], Path("py"), Path("m"), "int8", prompts=PROMPTS[:4],
            max_tokens=8, threads=2, rounds=1, log_path=Path("log"),
        )  # fmt: skip


FLOORS = [
    "max serve, 1 stream, float32 / CTranslate2 float32 in process",
    "max serve, 32 streams, float32 / CTranslate2 float32 in process",
    "max serve, 1 stream, Q8_0 / CTranslate2 int8 in process",
    "max serve, 32 streams, Q8_0 / CTranslate2 int8 in process",
]


def test_floors_are_unmeasured_until_the_turns_ran_then_their_ratios():
    data = results()
    rows = {row["floor"]: row for row in floors.evaluate(floors.rows(data))}
    for name in FLOORS:
        assert rows[name]["measured"] is None and rows[name]["met"] is None
        assert rows[name]["required"] == 1.0
    data["ctranslate2"] = {
        "float32": {"ratio_of_medians": {"1": 1.3, "32": 2.0}},
        "int8": {"ratio_of_medians": {"1": 1.2, "32": 0.9}},
    }
    rows = {row["floor"]: row for row in floors.evaluate(floors.rows(data))}
    assert [rows[n]["measured"] for n in FLOORS] == [1.3, 2.0, 1.2, 0.9]
    assert [rows[n]["met"] for n in FLOORS] == [True, True, True, False]


def test_table_has_every_turn_the_ratio_and_why_a_kind_was_not_measured():
    data = {
        "ctranslate2": {
            "check": {
                "greedy_matches_transformers": False,
                "config_the_converter_ignores": {"layer_norm_epsilon": 1e-06},
            },
            "float32": {
                "ours": {"1": [100.0, 90.0], "32": [900.0, 1000.0]},
                "ctranslate2": {"1": [80.0, 70.0], "32": [500.0, 600.0]},
                "ratio_of_medians": {"1": 95.0 / 75, "32": 950.0 / 550},
            },
            "int8": {"skipped": "CTranslate2 measure failed: boom"},
        }
    }
    text = ctranslate2_turns.table(data)
    assert (
        "greedy tokens equal transformers': NO; the converter ignores "
        "layer_norm_epsilon=1e-06"
    ) in text
    assert (
        "- 1 stream, in turns: ours served float32 100.0, 90.0 tok/s; CTranslate2 "
        "float32 in process 80.0, 70.0; ratio of the medians 1.27"
    ) in text
    assert "32 streams, in turns: ours served float32 900.0, 1000.0" in text
    assert "ratio of the medians 1.73" in text
    assert "CTranslate2 int8: not measured (CTranslate2 measure failed: boom)" in text
    assert ctranslate2_turns.table({}) == ""


def test_a_conversion_is_reused_for_the_same_checkpoint(monkeypatch, tmp_path):
    jobs: list = []

    def run_child(python, job):
        jobs.append(job["args"])
        out = Path(job["args"][job["args"].index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.bin").write_bytes(b"")
        return {}

    monkeypatch.setattr(peer_ctranslate2, "run_child", run_child)
    ckpt = tmp_path / "distil"
    first = peer_ctranslate2.convert(Path("py"), ckpt, tmp_path, "int8")
    again = peer_ctranslate2.convert(Path("py"), ckpt, tmp_path, "int8")
    f32 = peer_ctranslate2.convert(Path("py"), ckpt, tmp_path, "float32")
    assert first == again == tmp_path / "distil-ct2-int8"
    assert len(jobs) == 2
    assert jobs[0][-2:] == ["--quantization", "int8"]
    assert "--quantization" not in jobs[1] and f32 == tmp_path / "distil-ct2-float32"
    with pytest.raises(ValueError, match="quantization 'int4'"):
        peer_ctranslate2.convert(Path("py"), ckpt, tmp_path, "int4")


def test_a_child_that_fails_is_a_skip_with_its_last_error_line(monkeypatch, tmp_path):
    child = tmp_path / "child.py"
    child.write_text("import sys\nsys.exit('ValueError: no model.bin here')\n")
    monkeypatch.setattr(peer_ctranslate2, "CHILD", child)
    out = peer_ctranslate2.measure(
        Path(sys.executable), tmp_path, "int8", PROMPTS, 8, threads=2
    )
    assert out == {
        "skipped": "CTranslate2 measure failed: ValueError: no model.bin here"
    }


class FakeGenerator:
    def __init__(self, lengths: list[int]) -> None:
        self.lengths, self.options = lengths, {}

    def generate_batch(self, tokens, **options):
        self.options = options
        return [type("R", (), {"sequences_ids": [[7] * n]})() for n in self.lengths]


def test_the_child_asks_for_exactly_max_tokens_and_fails_on_fewer():
    gen = FakeGenerator([16, 16])
    assert ctranslate2_child.generate(gen, [["a"], ["b"]], 16) == [[7] * 16] * 2
    assert gen.options["min_length"] == gen.options["max_length"] == 16
    assert gen.options["include_prompt_in_result"] is False
    assert gen.options["sampling_topk"] == 1
    with pytest.raises(RuntimeError, match=r"asked for 16 new tokens, got \[3, 16\]"):
        ctranslate2_child.generate(FakeGenerator([16, 3]), [["a"], ["b"]], 16)


def _measure_peer(monkeypatch, tmp_path, q8_0: Path | None, install=None) -> tuple:
    from bench import workload

    turns: list = []
    monkeypatch.setattr(
        peer_ctranslate2, "install", install or (lambda root: Path("ct2/python"))
    )
    monkeypatch.setattr(
        peer_ctranslate2, "convert", lambda py, ckpt, out, kind: out / f"ct2-{kind}"
    )
    monkeypatch.setattr(
        peer_ctranslate2,
        "check_greedy",
        lambda *a: {"greedy_matches_transformers": True, "args": a},
    )
    monkeypatch.setattr(workload, "gguf_serve_args", lambda path: ["gguf", str(path)])

    def served_in_turns(ckpt, args, python, model_dir, kind, **options):
        turns.append((args, python, model_dir, kind, options["streams"]))
        return {"compute_type": kind}

    monkeypatch.setattr(ctranslate2_turns, "served_in_turns", served_in_turns)
    out = ctranslate2_turns.measure_peer(
        Path("ckpt"), q8_0, prompts=PROMPTS, max_tokens=128, threads=2, rounds=5,
        streams=(1, 32), out=tmp_path, peers_dir=tmp_path / "peers",
    )  # fmt: skip
    return out, turns


def test_the_peer_runs_float32_against_float32_and_int8_against_q8_0(
    monkeypatch, tmp_path
):
    out, turns = _measure_peer(monkeypatch, tmp_path, Path("/m/ckpt-q8_0.gguf"))
    models = tmp_path / "checkpoints"
    assert turns == [
        (
            ["--devices", "cpu", "--quantization-encoding", "float32"],
            Path("ct2/python"),
            models / "ct2-float32",
            "float32",
            (1, 32),
        ),
        (
            ["gguf", "/m/ckpt-q8_0.gguf"],
            Path("ct2/python"),
            models / "ct2-int8",
            "int8",
            (1, 32),
        ),
    ]
    assert out["check"]["args"][2] == models / "ct2-float32"
    assert out["float32"] == {"compute_type": "float32"}
    assert out["int8"] == {"compute_type": "int8"}


def test_without_a_q8_0_file_or_a_peer_what_is_missing_says_why(monkeypatch, tmp_path):
    from bench.peer_venv import PeerUnavailable

    out, turns = _measure_peer(monkeypatch, tmp_path, None)
    assert [t[3] for t in turns] == ["float32"]
    assert out["int8"] == {"skipped": "no Q8_0 file: q8_0 not among the encodings"}

    def install(root):
        raise PeerUnavailable("pip failed")

    out, turns = _measure_peer(monkeypatch, tmp_path, None, install)
    assert turns == []
    assert out == {
        "float32": {"skipped": "pip failed"},
        "int8": {"skipped": "pip failed"},
    }
