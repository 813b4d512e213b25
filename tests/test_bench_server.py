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


@pytest.mark.parametrize("min_queries,valid", [(1, False), (500, True)])
def test_a_point_runs_until_its_minimum_query_count(tmp_path, min_queries, valid):
    """250 QPS for 1 s is ~250 queries: LoadGen's early stopping calls that INVALID even with every latency far
    under its limit (it wants ~460 in all); with min_query_count 500 the point issues all 568 loaded samples (equal
    issue) and is VALID. The issue's Server/Interactive rows ask for >= 500 queries for this reason."""
    done = run_main([tmp_path, "250", "1", "--seconds", 1, "--tokens", TOKENS, "--min-queries", min_queries],
                    tmp_path, timeout=120, script="tests/bench_server_run.py")
    assert done.returncode == 0, done.stderr[-3000:]
    (point,) = json.loads((tmp_path / "points.json").read_text())
    loaded = bench_server.point_sample_count(250, 1, 2048, min_queries=min_queries)
    assert loaded == (500 + 68 if min_queries == 500 else 250 + 48)
    assert point["samples"] == point["samples_loaded"] == loaded and point["meets_limits"]
    assert point["loadgen_errors"] == [] and point["valid"] is valid
    assert f"Server.min_query_count = {min_queries}\n" in (tmp_path / "user.conf").read_text()


def test_sample_counts_and_user_conf_without_a_minimum_keep_the_duration_rule():
    assert bench_server.point_sample_count(100, 1, 2048) == 100 + 30
    assert bench_server.point_sample_count(2, 60, 2048, min_queries=500) == 500 + 68
    assert bench_server.point_sample_count(10, 60, 2048, min_queries=500) == 600 + 74  # the duration governs
    assert "Server.min_query_count = 1\n" in bench_server.user_conf_text(bench_server.SERVER, 60)


def test_bench_refuses_a_minimum_query_count_below_one(tmp_path):
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts",
                     0, "--server-qps", 4, "--server-min-queries", 0, "--out", tmp_path / "out"], tmp_path,
                    timeout=120, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--server-min-queries must be >= 1, got 0" in lines[0], proc.stderr[-2000:]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_is_one_line_before_building_a_model(tmp_path):
    proc = run_main(["--shape", "tiny", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts", 0,
                     "--out", tmp_path / "out"], tmp_path, timeout=120, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda but torch sees no CUDA GPU" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # refused before anything is written or built


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


def test_step_limits_are_lowered_and_restored_within_what_the_engine_was_built_for():
    from types import SimpleNamespace

    from mlperf_llama2.engine.config import EngineConfig
    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.engine.sequence import SamplingParams, Sequence

    engine = LLMEngine(SimpleNamespace(num_blocks=64), EngineConfig(max_num_seqs=8, max_num_batched_tokens=128), 2)
    engine.set_step_limits(2, 24)
    for i in range(4):
        engine.scheduler.add(Sequence.create(i, list(range(3, 23)), SamplingParams(4)))
    batch = engine.scheduler.schedule()
    assert [n for _, n in batch.items] == [20, 4]  # 24 tokens, and the second prompt chunked to fit them
    assert len(engine.scheduler.running) == 2
    for bad in ({"max_num_seqs": 9}, {"max_num_batched_tokens": 0}, {"max_num_batched_tokens": 129}):
        with pytest.raises(ValueError, match="built for 1\\.\\."):
            engine.set_step_limits(**bad)
    engine.set_step_limits(max_num_batched_tokens=128)  # restored; the other limit is kept
    assert (engine.scheduler.max_num_seqs, engine.scheduler.max_num_batched_tokens) == (2, 128)


def test_each_swept_setting_gets_its_own_best_point():
    def point(seqs, tokens, qps, ok, tps):
        return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "qps": qps, "meets_limits": ok,
                "completed_tokens_per_s": tps, "valid": ok}
    points = [point(64, 1024, 2.0, True, 500.0), point(64, 1024, 3.0, False, 600.0), point(128, 1024, 2.0, False, 0.0),
              point(64, 1024, 2.5, True, 550.0), point(64, 4096, 2.0, True, 510.0)]
    rows = bench_server.setting_bests(points)
    assert [(r["max_num_seqs"], r["max_num_batched_tokens"], r["points"], r["best_qps"]) for r in rows] == [
        (64, 1024, 3, 2.5), (128, 1024, 1, None), (64, 4096, 1, 2.0)]
    assert rows[0]["best_tokens_per_s"] == 550.0 and rows[1]["best_valid"] is None
    lines = bench_server.sweep_lines({"limits": {"lg_model_name": "m", "ttft_ms": 450, "tpot_ms": 40},
                                      "min_duration_s": 60, "offline_tokens_per_s": None, "offline_source": None,
                                      "points": [], "settings": rows, "best_qps": None})
    assert "--max-num-seqs 128 --max-num-batched-tokens 1024: no point met the limits" in "\n".join(lines)
    assert "--max-num-seqs 64 --max-num-batched-tokens 1024: highest QPS meeting the limits 2.5 (550 tok/s" \
        in "\n".join(lines)


def test_bench_refuses_a_setting_sweep_without_server_points(tmp_path):
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts",
                     0, "--seq-caps", "2,4", "--out", tmp_path / "out"], tmp_path, timeout=120,
                    script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--server-qps" in lines[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_bench_sweeps_sequence_caps_and_token_budgets_on_one_engine(tmp_path):
    proc = run_main(["--shape", "tiny", "--layers", 1, "--device", "cpu", "--samples", 0, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--output-cap", 4, "--server-qps", 4, "--server-seconds", 1,
                     "--server-samples", 16, "--offline-json", _offline_json(tmp_path), "--seq-caps", "1,4",
                     "--token-budgets", "32,256", "--out", tmp_path / "out"], tmp_path, timeout=400,
                    script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    settings = [(p["max_num_seqs"], p["max_num_batched_tokens"]) for p in result["server"]["points"]]
    assert settings == [(1, 32), (1, 256), (4, 32), (4, 256)]
    assert all(p["samples"] == p["samples_loaded"] and not p["failures"] for p in result["server"]["points"])
    assert [(r["max_num_seqs"], r["max_num_batched_tokens"]) for r in result["server"]["settings"]] == settings
    table = (tmp_path / "out" / "table.txt").read_text()
    assert "[seqs 4, budget 256]" in table and "--max-num-seqs 1 --max-num-batched-tokens 32:" in table
    # each point's engine steps timed (tools/step_timer.py)
    assert all(p["host"]["steps"] > 0 and 0 <= p["host"]["wait_share"] <= 1 for p in result["server"]["points"])
    assert table.count("waiting for the GPU") == 4


@pytest.mark.slow
def test_bench_graph_mixed_ab_runs_each_point_eager_then_through_the_rows(tmp_path):
    proc = run_main(["--shape", "tiny", "--layers", 1, "--device", "cpu", "--samples", 0, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--output-cap", 4, "--server-qps", "3,6", "--server-seconds", 1,
                     "--server-samples", 16, "--offline-json", _offline_json(tmp_path), "--graph-mixed-ab", 512,
                     "--out", tmp_path / "out"], tmp_path, timeout=400, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    server = json.loads((tmp_path / "out" / "bench.json").read_text())["server"]
    points = server["points"]
    assert [(p["qps"], p["graph_mixed_tokens"]) for p in points] == [(3, 0), (3, 512), (6, 0), (6, 512)]
    assert all(p["samples"] == p["samples_loaded"] and not p["failures"] for p in points)
    # a tiny prompt fits one step: every step with a prompt chunk goes through the rows when on, none when off
    assert [p["flat_steps"] > 0 for p in points] == [False, True, False, True]
    assert [r.get("graph_mixed_tokens") for r in server["settings"]] == [0, 512]
    assert "--max-num-batched-tokens 8192 --graph-mixed-tokens 512: " in (tmp_path / "out" / "table.txt").read_text()


@pytest.mark.parametrize("flags,message", [
    (["--graph-mixed-ab", 64, "--graph-mixed-tokens", 64], "leave --graph-mixed-tokens out"),
    (["--row-groups"], "--row-groups / --no-row-groups is the attention of flat steps: give --graph-mixed-tokens"),
    (["--no-row-groups"], "--row-groups / --no-row-groups is the attention of flat steps: give --graph-mixed-tokens"),
])
def test_bench_graph_mixed_ab_and_row_groups_are_refused_in_one_line(tmp_path, flags, message):
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 0, "--ref-samples", 0, "--fidelity-prompts",
                     0, "--server-qps", 2, "--offline-json", _offline_json(tmp_path), *flags,
                     "--out", tmp_path / "out"], tmp_path, timeout=120, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


def _offline_json(tmp_path) -> str:
    path = tmp_path / "offline.json"
    path.write_text(json.dumps({"rows": [{"backend": "engine", "tokens_per_s": 100.0}]}))
    return str(path)


def test_bench_json_records_the_commit_and_every_8bit_linears_gemm(tmp_path):
    """Kernel defaults change between sessions: bench.json names what ran (the harness commit, each 8-bit
    Linear's GEMM path; on CUDA also the decode attention variant and gemm8_ws's tile table)."""
    from mlperf_llama2.report.run_info import git_state

    proc = run_main(["--shape", "tiny", "--layers", 2, "--device", "cpu", "--samples", 4, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--output-cap", 4, "--weights", "int8", "--out", tmp_path / "out"],
                    tmp_path, timeout=300, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    prov = json.loads((tmp_path / "out" / "bench.json").read_text())["provenance"]
    assert prov["harness_commit"] == git_state().commit  # None outside a git checkout, on both sides
    assert sum(prov["gemm_paths"].values()) == 4 * 2 + 1  # qkv, o, gate_up, down per layer, and lm_head


@pytest.mark.parametrize("flags", [["--weights", "fp8", "--fp8-accumulation", "fast"],
                                   ["--weights", "int8", "--engine-gemm", "triton"]])
def test_bench_refuses_a_cuda_gemm_choice_on_the_cpu_in_one_line(tmp_path, flags):
    """A CPU run computes every 8-bit GEMM on the exact reference path: a GEMM choice there would be ignored."""
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts",
                     0, *flags, "--out", tmp_path / "out"], tmp_path, timeout=120,
                    script=str(REPO / "tools" / "bench.py"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "choose among CUDA GEMMs" in lines[0], proc.stderr[-2000:]


def test_point_line_names_the_sm_clock_only_where_it_was_sampled():
    point = {"limits": "server", "qps": 5.0, "completed_samples_per_s": 4.9, "completed_tokens_per_s": 1450.0,
             "ttft_p99_ms": 900.0, "tpot_p99_ms": 150.0, "meets_limits": True, "result": "VALID"}
    assert "SM clock" not in bench_server.point_line(point)
    clocked = {**point, "gpu_clock": {"mhz_median": 1647.6, "watts_median": 637.0}}
    assert bench_server.point_line(clocked).endswith("; SM clock median 1,648 MHz, 637 W")


def test_bench_records_the_clock_and_the_roofline_at_it_beside_each_figure(tmp_path):
    """bench.py's clock path end to end on the CPU: a stand-in sampler (the real one needs CUDA and nvidia-smi)
    answers every window with two samples; the Offline row and each Server point carry their clock, the Offline
    row the 8-bit roofline at that clock, and the table prints it."""
    wrapper = tmp_path / "bench_clocked.py"
    wrapper.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tools')!r})\n"
        "import bench\n"
        "class Fake:\n"
        "    def between(self, t0, t1):\n"
        "        return [{'mhz': 1200.0, 'watts': 699.0, 'celsius': 60.0, 'reasons': 4},\n"
        "                {'mhz': 1400.0, 'watts': 690.0, 'celsius': 61.0, 'reasons': 0}]\n"
        "    def close(self):\n"
        "        return ''\n"
        "bench.clock_sampler = lambda device: Fake()\n"
        "sys.exit(bench.run_cli(bench.main, sys.argv[1:]))\n")
    proc = run_main(["--shape", "tiny", "--layers", 2, "--device", "cpu", "--samples", 4, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--output-cap", 4, "--weights", "int8", "--server-qps", "50",
                     "--server-seconds", "1", "--server-min-queries", "4", "--out", tmp_path / "out"],
                    tmp_path, timeout=300, script=str(wrapper))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    row = result["rows"][-1]
    assert row["gpu_clock"]["mhz_median"] == 1300.0 and row["gpu_clock"]["reasons"] == ["SwPowerCap"]
    # the roofline at 1,300 MHz is below the datasheet one (1,830 MHz)
    assert row["roofline_at_clock_tokens_per_s"] < row["roofline_tokens_per_s"]
    assert all(p["gpu_clock"]["watts_median"] == 694.5 for p in result["server"]["points"])
    table = (tmp_path / "out" / "table.txt").read_text()
    assert "engine GPU: SM clock median 1,300 MHz (1,200-1,400), power median 694 W, SwPowerCap; the 8-bit " \
           "roofline at that clock" in table
