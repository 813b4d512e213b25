"""tools/bench_server.py: the LoadGen Server sweep's runs, summary parsing and QPS choice.

Two real LoadGen Server points in one process against a timed fake backend (seconds): LoadGen's
p99 TTFT/TPOT, tokens/s and verdict are read back, the explicit limits are in force, and the second
point keeps mlperf.conf's token latencies without a "multiple conf files" error. The automatic
search and the choice of the highest QPS meeting the limits on given results.
"""

from __future__ import annotations

import json
import sys

import pytest

from loadgen_fixtures import REPO, run_main

sys.path.insert(0, str(REPO / "tools"))
import bench_server  # noqa: E402

TOKENS = 8


def test_two_server_points_in_one_process(tmp_path):
    done = run_main([tmp_path, "200,200", "1,250", "--seconds", 3, "--tokens", TOKENS], tmp_path, timeout=120,
                    script="tests/bench_server_run.py")
    assert done.returncode == 0, done.stderr[-3000:]
    fast, slow = json.loads((tmp_path / "points.json").read_text())
    loaded = bench_server.point_sample_count(200, 3, 2048)
    for point in (fast, slow):
        assert point["loadgen_errors"] == []
        assert (point["ttft_limit_ms"], point["tpot_limit_ms"]) == (2000, 200)
        assert point["samples"] == point["samples_loaded"] == point["performance_sample_count"] == loaded
        assert point["completed_tokens_per_s"] == pytest.approx(TOKENS * point["completed_samples_per_s"], rel=0.01)
        assert point["ttft_p99_ms"] < 2000  # the fake answers its first token in 2 ms (a busy CPU adds some)
    assert fast["tpot_p99_ms"] < 200 and fast["meets_limits"] and fast["result"] == "VALID" and fast["valid"]
    assert slow["tpot_p99_ms"] >= 245 and not slow["meets_limits"] and slow["result"] == "INVALID"
    assert any("TPOT constrain not met" in note for note in slow["notes"])


def _measure_against(edge_qps: float, measured: list[float]):
    def measure(qps: float) -> dict:
        measured.append(qps)
        return {"qps": qps, "meets_limits": qps <= edge_qps}
    return measure


def test_auto_sweep_bisects_towards_the_edge():
    measured: list[float] = []
    points = bench_server.auto_sweep(10.0, _measure_against(8.2, measured), 4, bench_server.SERVER.auto_range)
    assert measured == [9.0, 7.5, 8.25, 7.875]
    assert bench_server.best_point(points)["qps"] == 7.875
    measured.clear()
    bench_server.auto_sweep(10.0, _measure_against(100.0, measured), 3, bench_server.SERVER.auto_range)
    assert measured == [9.0, 9.5, 9.75]


def test_best_point_is_the_highest_meeting_the_limits():
    points = [{"qps": 12.0, "meets_limits": True}, {"qps": 16.0, "meets_limits": False},
              {"qps": 14.0, "meets_limits": True}, {"qps": 15.0, "meets_limits": False}]
    assert bench_server.best_point(points)["qps"] == 14.0
    assert bench_server.best_point(points[1:2]) is None
    failed = {"ttft_p99_ms": 10.0, "tpot_p99_ms": 5.0, "failures": 1}
    assert not bench_server.meets(failed, bench_server.SERVER)
    assert bench_server.meets({**failed, "failures": 0}, bench_server.INTERACTIVE)
    assert not bench_server.meets({"ttft_p99_ms": 10.0, "tpot_p99_ms": 41.0}, bench_server.INTERACTIVE)
