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
            # Every stream got all its tokens (EOS ignored).
            assert level["output_tokens"] == 4 * level["concurrency"]
            assert level["tokens_per_second"] > 0
        assert results[side]["ttft_seconds"]["8"] > 0
        assert results[side]["startup_seconds"]["warm"] > 0
    # The engine's prefill is timed on the loaded model, after its decode.
    assert results["ours"]["engine"]["1"]["prefill_tokens"] == 8
    assert results["ours"]["engine"]["1"]["prefill_seconds"] > 0
    # --quick installs no peer; their floors are reported as not measured.
    assert results["peers_requested"] == []
    assert "vllm" not in results and "llama.cpp" not in results
    floors = {row["floor"]: row for row in results["floors"]}
    assert floors["max serve, 2 streams / vLLM CPU served"]["met"] is None
    assert floors["engine, 1 stream, float32 / read-bandwidth ceiling"]["measured"]
    assert set(results["transformers"]) == {"1", "2"}
    assert results["ceilings"]["one_stream_tokens_per_second"] > 0
    assert results["weight_bytes"]["gpt2"] > 0
    q4_0 = results["gguf"]["q4_0"]
    assert [lv["concurrency"] for lv in q4_0["levels"]] == [1, 2]
    assert all(lv["output_tokens"] == 4 * lv["concurrency"] for lv in q4_0["levels"])
    assert set(q4_0["engine"]) == {"1", "2"}
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
