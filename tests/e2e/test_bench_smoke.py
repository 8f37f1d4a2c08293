"""The benchmark's smoke run: every stage runs and reports, no timings judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_every_stage(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
        env={**os.environ, "MAX_SERVE_DISABLE_TELEMETRY": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for side in ("ours", "llama"):
        levels = results[side]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        for level in levels:
            # Every stream got all its tokens (EOS ignored), in each turn.
            assert level["output_tokens"] == 4 * level["concurrency"]
            assert len(level["turns"]) == 1 and level["turns"][0] > 0
        assert results[side]["ttft_seconds"]["8"] > 0
        assert results[side]["startup_seconds"]["warm"] > 0
        assert results[side]["engine"]["2"]["turns"][0] > 0
    # One stream in process: the engine's turn, bracketed by bandwidth
    # probes in its own process, and its prefill on the same loaded model.
    f32 = results["one_stream"]["f32"]
    turn = f32["ours"][0]
    assert turn["prefill_tokens"] == 8 and turn["prefill_seconds"] > 0
    bracket = turn["bandwidth"]
    assert bracket["gbs"] == max(bracket["before"]["gbs"], bracket["after"]["gbs"]) > 0
    assert (
        0
        < f32["bandwidth_share"]["shares"][0]
        == pytest.approx(
            turn["tokens_per_second"] * f32["bytes_per_token"] / (bracket["gbs"] * 1e9)
        )
    )
    assert f32["served_tokens_per_second"][0] > 0
    # --quick installs no peer; their floors are reported as not measured.
    assert results["peers_requested"] == []
    assert "vllm" not in results
    assert "llama.cpp is not among the peers requested" in f32["llama.cpp"]["skipped"]
    floors = {row["floor"]: row for row in results["floors"]}
    assert floors["max serve, 2 streams / vLLM CPU served"]["met"] is None
    assert floors["engine, 1 stream, float32 / bracketing read bandwidth"]["measured"]
    assert set(results["transformers"]) == {"1", "2"}
    # The ceiling is the best probe of the run, the turns' brackets included.
    assert results["machine"]["read_bandwidth_gbs"] >= bracket["gbs"]
    assert results["weight_bytes"]["gpt2"] > 0
    q4_0 = results["gguf"]["q4_0"]
    assert [lv["concurrency"] for lv in q4_0["levels"]] == [1, 2]
    assert all(lv["output_tokens"] == 4 * lv["concurrency"] for lv in q4_0["levels"])
    assert q4_0["engine"]["2"]["tokens_per_second"] > 0
    assert results["one_stream"]["q4_0"]["ours_tokens_per_second"][0] > 0
    # Q4_0 reads under a sixth of float32's bytes per token.
    assert (
        0
        < q4_0["weight_bytes_per_token"]
        < results["costs"]["weight_bytes_per_token"] / 6
    )
    table = (tmp_path / "table.md").read_text()
    assert "| 1 |" in table
    assert "| q4_0 |" in table
    assert "| floor |" in table
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
