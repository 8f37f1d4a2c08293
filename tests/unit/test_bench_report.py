"""The benchmark's floors: each ratio computed from the right two figures."""

from __future__ import annotations

from bench import report


def levels(tps: dict[int, float]) -> list[dict[str, float]]:
    return [{"concurrency": n, "tokens_per_second": v} for n, v in tps.items()]


def engine(tps: dict[int, float]) -> dict[str, dict[str, float]]:
    return {str(b): {"tokens_per_second": v} for b, v in tps.items()}


def results() -> dict:
    return {
        "machine": {"read_bandwidth_gbs": 30.0},
        "ceilings": {
            "one_stream_tokens_per_second": 100.0,
            "large_batch_tokens_per_second": 1000.0,
        },
        "workload": {"levels": [1, 32]},
        "ours": {
            "levels": levels({1: 70.0, 32: 600.0}),
            "engine": engine({1: 90.0, 32: 700.0}),
        },
        "vllm": {"levels": levels({1: 30.0, 32: 300.0})},
        "llama.cpp": {
            "f32": {
                "tokens_per_second": 80.0,
                "prefill_seconds": 0.4,
                "prefill_tokens": 512,
            },
            "q4_k": {"skipped": "no"},
        },
        "gguf": {
            "q4_k": {
                "engine": engine({1: 400.0, 32: 900.0}),
                "weight_bytes_per_token": 60e6,
            }
        },
        "xl": {
            "ours": {"f32": {"tokens_per_second": 4.5}},
            "llama.cpp": {"f32": {"tokens_per_second": 5.0}, "q4_k": {"skipped": "x"}},
        },
    }


def by_name() -> dict[str, dict]:
    return {row["floor"]: row for row in report.floors(results())}


def test_each_floor_is_the_ratio_of_its_two_figures():
    rows = by_name()
    expected = {
        "engine, 1 stream, float32 / llama.cpp in process": (90 / 80, True),
        "engine, 1 stream, float32 / read-bandwidth ceiling": (0.90, True),
        "max serve, 1 stream, float32 / llama.cpp in process": (70 / 80, True),
        "engine, 32 streams / GEMM ceiling": (0.70, True),
        "max serve, 32 streams / vLLM CPU served": (2.0, True),
        "q4_k engine, 1 stream: matmul bytes read / bandwidth": (
            400 * 60e6 / 30e9,
            True,
        ),
        "GPT-2 XL shape, f32, engine 1 stream / llama.cpp": (0.9, True),
    }
    for name, (value, met) in expected.items():
        assert abs(rows[name]["measured"] - value) < 1e-9, name
        assert rows[name]["met"] is met, name


def test_a_floor_below_its_bar_is_reported_unmet():
    data = results()
    data["ours"]["levels"] = levels({1: 60.0, 32: 400.0})
    rows = {row["floor"]: row for row in report.floors(data)}
    assert rows["max serve, 1 stream, float32 / llama.cpp in process"]["met"] is False
    assert rows["max serve, 32 streams / vLLM CPU served"]["met"] is False
    assert "**no**" in report.floors_table(data)


def test_a_skipped_or_absent_peer_leaves_its_floor_unmeasured():
    rows = by_name()
    xl_q4_k = rows["GPT-2 XL shape, q4_k, engine 1 stream / llama.cpp"]
    assert xl_q4_k["measured"] is None and xl_q4_k["met"] is None
    data = results()
    del data["vllm"], data["llama.cpp"]
    rows = {row["floor"]: row for row in report.floors(data)}
    assert rows["max serve, 32 streams / vLLM CPU served"]["met"] is None
    assert rows["engine, 1 stream, float32 / llama.cpp in process"]["met"] is None
    assert "not measured" in report.floors_table(data)


def test_turns_of_both_decide_the_one_stream_floor():
    data = results()
    data["one_stream_rounds"] = {
        "ours": [80.0, 70.0, 90.0],
        "llama.cpp": [100.0, 60.0, 80.0],
        "ratio_of_medians": 1.0,
    }
    rows = {row["floor"]: row for row in report.floors(data)}
    row = rows["engine, 1 stream, float32 / llama.cpp in process"]
    assert row["measured"] == 1.0 and row["met"] is True
    assert "ratio of the medians 1.00" in report.llama_cpp_table(data)


def test_each_turn_is_held_to_the_bandwidth_probed_beside_it():
    """With probes in the turns, the bandwidth floor is the median of each
    turn's share, not one engine figure over the run's best probe."""
    data = results()
    data["costs"] = {"weight_bytes_per_token": 0.9e9, "kv_bytes_per_token": 0.1e9}
    data["one_stream_rounds"] = {
        "ours": [20.0, 40.0, 45.0],
        "llama.cpp": [10.0, 10.0, 10.0],
        "bandwidth_gbs": [40.0, 50.0, 50.0],
        "ratio_of_medians": 4.0,
    }
    rows = {row["floor"]: row for row in report.floors(data)}
    row = rows["engine, 1 stream, float32 / read-bandwidth ceiling"]
    # Shares 0.5, 0.8, 0.9: the median; the old figure (90/100) would say 0.9.
    assert row["measured"] == 0.8 and row["met"] is False


def test_served_turns_decide_the_served_one_stream_floor():
    """Served one stream is held to llama.cpp measured in the same turns,
    not to a llama.cpp figure taken at another moment of the run."""
    data = results()
    data["one_stream_rounds"] = {
        "ours": [80.0, 70.0, 90.0],
        "served": [50.0, 90.0, 70.0],
        "llama.cpp": [100.0, 60.0, 80.0],
        "ratio_of_medians": 1.0,
        "served_ratio_of_medians": 70.0 / 80.0,
    }
    rows = {row["floor"]: row for row in report.floors(data)}
    row = rows["max serve, 1 stream, float32 / llama.cpp in process"]
    assert row["measured"] == 70.0 / 80.0 and row["met"] is True
    assert "ratio of the medians to llama.cpp 0.88" in report.llama_cpp_table(data)


def test_turns_of_both_servers_decide_the_many_streams_floor():
    data = results()
    data["vllm"]["ttft_seconds"] = {"32": 0.05}
    data["vllm"]["many_stream_rounds"] = {
        "streams": 32,
        "ours": [500.0, 600.0, 550.0],
        "vllm": [400.0, 300.0, 350.0],
        "ratio_of_medians": 550.0 / 350.0,
    }
    rows = {row["floor"]: row for row in report.floors(data)}
    row = rows["max serve, 32 streams / vLLM CPU served"]
    assert row["measured"] == 550.0 / 350.0 and row["met"] is True
    assert "ratio of the medians 1.57" in report.vllm_table(data)


def test_xl_turns_are_listed_beside_their_medians():
    data = results()
    data["machine"]["read_bandwidth_gbs"] = 30.0
    data["xl"] = {
        "weight_bytes_per_token": {"f32": 6.2e9},
        "ours": {"f32": {"tokens_per_second": 5.0, "turns": [4.0, 5.0, 6.0]}},
        "llama.cpp": {"f32": {"tokens_per_second": 5.0, "turns": [5.0, 5.5, 4.5]}},
    }
    table = report.xl_table(data)
    assert "f32 ours 4.00, 5.00, 6.00, llama.cpp 5.00, 5.50, 4.50" in table
    rows = {row["floor"]: row for row in report.floors(data)}
    assert rows["GPT-2 XL shape, f32, engine 1 stream / llama.cpp"]["measured"] == 1.0
