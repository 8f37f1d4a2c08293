"""The ablations' arithmetic and table, with fake measurements: turns
alternate in ABBA order, each figure is the median of its turns, the ratio
is of the medians."""

from __future__ import annotations

import os

import pytest

from bench import ablations, turns


def test_ratio_of_medians_is_not_the_median_of_ratios():
    # medians 4 and 2; the median of the per-turn ratios (0.2, 4, 5) is 4
    assert turns.ratio_of_medians([1, 4, 10], [5, 1, 2]) == 2.0
    assert turns.ratio_of_medians([3, 1], [1, 1]) == 2.0  # even: the mean of two


def test_in_turns_alternates_abba_and_probes_each_round():
    calls: list[str] = []
    figures = {"a": iter([10.0, 11.0, 12.0]), "b": iter([5.0, 6.0, 7.0])}

    def side(name):
        return lambda: calls.append(name) or next(figures[name])

    turns = ablations.in_turns(
        {"a": side("a"), "b": side("b")}, 3, lambda: calls.append("probe")
    )
    assert calls == ["probe", "a", "b", "probe", "b", "a", "probe", "a", "b"]
    assert turns == {"a": [10.0, 11.0, 12.0], "b": [5.0, 6.0, 7.0]}


def test_comparison_ratio_is_first_side_over_second_and_none_for_one_side():
    row = ablations.comparison(
        "runtime threads", "1 streams", "tok/s", {"shipped": [3, 9, 6], "nice 0": [4]}
    )
    assert row["ratio_of_medians"] == pytest.approx(1.5)
    alone = ablations.comparison("xl", "8 streams", "tok/s", {"all": [1.0, 2.0]})
    assert alone["ratio_of_medians"] is None


def test_table_shows_every_turn_each_median_and_the_ratio_once():
    rows = [
        ablations.comparison(
            "ggml kernels",
            "q4_k, batch 1",
            "tok/s",
            {"ours": [300.0, 320.0, 310.0], "MAX qmatmul": [200.0, 250.0, 240.0]},
        ),
        ablations.comparison("gpt2-xl q4_k", "8 streams", "tok/s", {"all": [40.0]}),
    ]
    text = ablations.table({"rounds": 3, "rows": rows, "bandwidth_gbs": [34.5, 55.0]})
    lines = text.splitlines()
    assert "34.5, 55 GB/s" in lines[0] and "3 round(s)" in lines[0]
    ours = next(line for line in lines if "| ours |" in line)
    theirs = next(line for line in lines if "| MAX qmatmul |" in line)
    assert "300, 320, 310" in ours and "| 310 tok/s |" in ours
    assert ours.endswith("| 1.292 |")  # 310 / 240
    assert "| 240 tok/s |" in theirs and theirs.endswith("|  |")
    xl = next(line for line in lines if "| gpt2-xl q4_k |" in line)
    assert xl.endswith("| 40 tok/s |  |")


def test_environment_is_restored(monkeypatch):
    monkeypatch.setenv("GPT2_MAX_TEST_SWITCH", "before")
    with ablations.environment("GPT2_MAX_TEST_SWITCH", "during"):
        assert os.environ["GPT2_MAX_TEST_SWITCH"] == "during"
    assert os.environ["GPT2_MAX_TEST_SWITCH"] == "before"
    monkeypatch.delenv("GPT2_MAX_TEST_SWITCH")
    with ablations.environment("GPT2_MAX_TEST_SWITCH", "during"):
        pass
    assert "GPT2_MAX_TEST_SWITCH" not in os.environ


def test_served_sides_differ_from_the_shipped_server_in_one_setting_each():
    shipped = ablations.SERVERS["shipped"]
    assert shipped == {
        "GPT2_MAX_WORKER_NICE": "19",
        "MAX_SERVE_METRIC_RECORDING_METHOD": "NOOP",
    }
    for other in ablations.SERVED.values():
        changed = {
            k for k, v in ablations.SERVERS[other].items() if shipped.get(k) != v
        }
        assert len(changed) == 1, (other, changed)
