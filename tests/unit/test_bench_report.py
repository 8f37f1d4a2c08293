"""The benchmark's floors and tables: each ratio computed from the right
two sets of turns, each bandwidth share held to its own bracket."""

from __future__ import annotations

import pytest

from bench import ceilings, floors, one_stream, report


def levels(turns: dict[int, list[float]]) -> list[dict]:
    return [
        {
            "concurrency": n,
            "tokens_per_second": sorted(t)[(len(t) - 1) // 2],
            "turns": t,
            "itl_p50_ms": 10.0,
            "itl_p99_ms": 20.0,
        }
        for n, t in turns.items()
    ]


def engine_turn(tps: float, before: float, after: float) -> dict:
    return {
        "tokens_per_second": tps,
        "prefill_seconds": 0.3,
        "bandwidth": {
            "before": {"gbs": before},
            "after": {"gbs": after},
            "gbs": max(before, after),
        },
    }


def results() -> dict:
    f32_bytes = 1e9
    ours = [engine_turn(40.0, 50.0, 45.0), engine_turn(20.0, 30.0, 40.0),
            engine_turn(45.0, 50.0, 50.0)]  # fmt: skip
    theirs = [{"tokens_per_second": v, "prefill_seconds": 0.6} for v in (30, 40, 50)]
    return {
        "model": "test",
        "machine": {"read_bandwidth_gbs": 50.0, "gemm_gflops": 100.0, "cores": 2},
        "costs": {"weight_bytes_per_token": f32_bytes, "kv_bytes_per_token": 0.0},
        "ceilings": {
            "one_stream_tokens_per_second": 50.0,
            "large_batch_tokens_per_second": 1000.0,
        },
        "workload": {"levels": [1, 32], "rounds": 3},
        "ours": {
            "levels": levels({1: [70.0, 60.0, 80.0], 32: [600.0, 500.0, 700.0]}),
            "engine": {"32": {"tokens_per_second": 700.0, "turns": [700.0, 650, 720]}},
        },
        "vllm": {"levels": levels({1: [30.0, 35, 40], 32: [300.0, 200, 400]})},
        "one_stream": {
            "f32": one_stream.summarize(ours, theirs, [60.0, 50.0, 55.0], f32_bytes),
            "q4_k": one_stream.summarize(
                [engine_turn(400.0, 50.0, 40.0)], [{"skipped": "no"}], [], 60e6
            ),
        },
        "xl": {
            "f32": {"ratio_of_medians": 0.95, "bandwidth_share": {"shares": []}},
            "q4_k": {"llama.cpp": {"skipped": "x"}, "bandwidth_share": {}},
        },
    }


def by_name(data: dict | None = None) -> dict[str, dict]:
    data = data or results()
    return {row["floor"]: row for row in floors.evaluate(floors.rows(data))}


def test_each_floor_is_the_ratio_of_the_medians_of_its_turns():
    rows = by_name()
    expected = {
        # ours 40 20 45 against llama.cpp 30 40 50: medians 40 / 40.
        "engine, 1 stream, float32 / llama.cpp in process": 1.0,
        # served 60 50 55: median 55 over llama.cpp's median 40.
        "max serve, 1 stream, float32 / llama.cpp in process": 55 / 40,
        "engine, 32 streams / GEMM ceiling": 0.70,
        # medians of the turns 600 / 300, not the median turns' own figures.
        "max serve, 32 streams / vLLM CPU served": 2.0,
        "GPT-2 XL shape, f32, engine 1 stream / llama.cpp": 0.95,
        # 400 tok/s x 60 MB over the higher probe, 50 GB/s.
        "q4_k engine, 1 stream / bracketing read bandwidth": 400 * 60e6 / 50e9,
    }
    for name, value in expected.items():
        assert rows[name]["measured"] == pytest.approx(value), name
    assert rows["engine, 1 stream, float32 / llama.cpp in process"]["met"] is True
    assert rows["q4_k engine, 1 stream / bracketing read bandwidth"]["met"] is False


def test_each_turn_is_held_to_the_higher_of_its_two_probes():
    """Shares 40/50, 20/40, 45/50 GB/s: 0.8, 0.5, 0.9, median 0.8. Against
    the probe before each turn alone the second would read 20/30."""
    share = results()["one_stream"]["f32"]["bandwidth_share"]
    assert share["shares"] == pytest.approx([0.8, 0.5, 0.9])
    assert share["median"] == pytest.approx(0.8)
    row = by_name()["engine, 1 stream, float32 / bracketing read bandwidth"]
    assert row["measured"] == pytest.approx(0.8) and row["met"] is False


def test_a_share_above_one_is_a_measurement_error_not_a_figure():
    data = results()
    ours = [engine_turn(40.0, 50.0, 45.0), engine_turn(60.0, 30.0, 40.0),
            engine_turn(45.0, 50.0, 50.0)]  # fmt: skip
    data["one_stream"]["f32"] = one_stream.summarize(ours, [], [], 1e9)
    share = data["one_stream"]["f32"]["bandwidth_share"]
    assert share["measurement_errors"] == pytest.approx([1.5])
    assert share["median"] == pytest.approx(0.85)  # of 0.8 and 0.9 only
    assert "one_stream f32: 1.50" in floors.bandwidth_errors(data)
    text = floors.table(
        floors.evaluate(floors.rows(data)), floors.bandwidth_errors(data)
    )
    assert "measurement errors, left out of every median): one_stream f32: 1.50" in text
    assert ceilings.shares_summary([1.2, 1.01])["median"] is None


def test_a_skipped_or_absent_peer_leaves_its_floor_unmeasured():
    rows = by_name()
    assert rows["GPT-2 XL shape, q4_k, engine 1 stream / llama.cpp"]["met"] is None
    data = results()
    del data["vllm"], data["one_stream"]["f32"]
    rows = by_name(data)
    assert rows["max serve, 32 streams / vLLM CPU served"]["met"] is None
    assert rows["engine, 1 stream, float32 / llama.cpp in process"]["met"] is None
    text = floors.table(floors.evaluate(floors.rows(data)), [])
    assert "not measured" in text and "none" in text


def test_a_floor_below_its_bar_is_reported_unmet():
    data = results()
    data["ours"]["levels"] = levels({1: [70.0], 32: [400.0, 410.0, 420.0]})
    rows = by_name(data)
    assert rows["max serve, 32 streams / vLLM CPU served"]["measured"] == 410 / 300
    assert rows["max serve, 32 streams / vLLM CPU served"]["met"] is False


def test_tables_print_every_turn_and_the_medians():
    data = results()
    served = report.served_table(data)
    assert "| 32 | 600.0 | n/a | n/a | 300.0 | 2.00 |" in served
    assert "ours at 32: 600.0, 500.0, 700.0" in served
    one = report.one_stream_table(data)
    assert "| f32 | 40.0 | 40.0 | 1.00 | 55.0 | 1.38 | 0.80 | 2.00 |" in one
    assert "llama.cpp skipped (no)" in one
    assert "shares 0.80, 0.50, 0.90" in one


def test_a_bracket_holds_a_turn_to_the_higher_of_its_probes():
    bracket = ceilings.Bracket({"gbs": 30.0})
    assert bracket.gbs == 30.0  # the turn failed before its second probe
    bracket.after = {"gbs": 41.0}
    assert bracket.gbs == 41.0 and bracket.as_dict()["gbs"] == 41.0
    bracket.after = {"gbs": 20.0}
    assert bracket.gbs == 30.0
