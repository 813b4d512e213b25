"""tools/sched_sim.py: the step-time fit recovers a known model, and the replay of a KV-bound run through the real
scheduler reports its preemptions and recompute (more of both without the admission reserve)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from loadgen_fixtures import REPO, run_main

sys.path.insert(0, str(REPO / "tools"))
import sched_sim  # noqa: E402


def test_the_fit_recovers_a_known_step_model():
    rng = np.random.default_rng(0)
    log = []
    for _ in range(400):
        seqs, tokens = int(rng.integers(10, 500)), int(rng.integers(10, 8192))
        log.append([0, seqs, tokens, 30.0 + 0.05 * tokens + 0.2 * seqs + rng.normal(0, 0.01), seqs])
    log[3][3] = 1e5  # an autotuning step: left out as an outlier
    c0, c1, c2 = sched_sim.fit_step_model([[0, 1, 1, 9e4, 1]] * 3 + log)
    assert c0 == pytest.approx(30.0, abs=0.05) and c1 == pytest.approx(0.05, abs=1e-4)
    assert c2 == pytest.approx(0.2, abs=1e-3)


def test_a_kv_bound_replay_recomputes_less_with_the_reserve(tmp_path):
    bench = {"args": {"samples": 96, "seed": 0, "max_num_seqs": 64, "max_num_batched_tokens": 8192,
                      "lengths_from": None, "output_cap": None},
             "rows": [{"backend": "engine", "kv_blocks": 300, "steps": 1, "preemptions": 2, "wall_s": 1.0,
                       "tokens_per_s": 1.0,
                       "step_log": [[0, 5 + i % 7, 40 + 13 * i, 20.0 + 0.01 * (40 + 13 * i), 5 + i % 7]
                                    for i in range(60)]}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    proc = run_main(["--from-bench", path, "--reserves", "0,0.5", "--out", tmp_path / "out"], tmp_path, timeout=120,
                    script=str(REPO / "tools" / "sched_sim.py"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "sched_sim.json").read_text())
    plain, reserved = result["rows"]
    assert result["blocks"] == 300 and result["step_model_ms"][0] == pytest.approx(20.0, abs=1e-6)
    assert plain["preemptions"] > reserved["preemptions"] and plain["recomputed_share"] > reserved["recomputed_share"]
    assert reserved["recomputed_share"] >= 0.0
    assert "measured (no reserve): 1 steps, 2 preemptions" in proc.stdout


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    for argv, message in ((["--from-bench", tmp_path / "x.json"], "not a bench.json"),
                          (["--blocks", 10, "--max-num-seqs", 4, "--samples", 8], "--c0-ms and --c1-ms"),
                          ([], "give --from-bench, or --blocks")):
        proc = run_main(argv + ["--out", tmp_path / "o"], tmp_path, timeout=120,
                        script=str(REPO / "tools" / "sched_sim.py"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


def test_server_mode_reports_latencies_per_setting(tmp_path):
    bench = {"args": {"samples": 64, "seed": 0, "max_num_seqs": 64, "max_num_batched_tokens": 8192,
                      "lengths_from": None, "output_cap": None},
             "rows": [{"backend": "engine", "kv_blocks": 4000, "step_log": [
                 [0, 5 + i % 7, 40 + 13 * i, 20.0 + 0.01 * (40 + 13 * i), 5 + i % 7] for i in range(60)]}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    proc = run_main(["--from-bench", path, "--server-qps", 2, "--seq-caps", "4,32", "--token-budgets", "32,4096",
                     "--out", tmp_path / "out"], tmp_path, timeout=120, script=str(REPO / "tools" / "sched_sim.py"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "sched_sim_server.json").read_text())["rows"]
    by = {(r["max_num_seqs"], r["max_num_batched_tokens"]): r for r in rows}
    assert set(by) == {(4, 32), (4, 4096), (32, 32), (32, 4096)}
    # a 32-token budget chunks every prompt (~450 tokens) over many steps: the first token comes much later
    assert by[(32, 32)]["ttft_p99_ms"] > 2 * by[(32, 4096)]["ttft_p99_ms"]
    # 4 sequences at 2 QPS of ~300-token outputs (20 ms steps) cannot keep up: queries wait, TTFT grows
    assert by[(4, 4096)]["ttft_p99_ms"] > by[(32, 4096)]["ttft_p99_ms"]
    assert all(r["tpot_p99_ms"] >= 20.0 for r in rows)  # no step is shorter than the model's fixed 20 ms


def test_bench_takes_the_admission_reserve_for_ab_runs(tmp_path):
    bad = run_main(["--shape", "tiny", "--device", "cpu", "--growth-reserve", -1, "--out", tmp_path / "x"], tmp_path,
                   timeout=120, script=str(REPO / "tools" / "bench.py"))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and "--growth-reserve must be >= 0" in lines[0]
    proc = run_main(["--shape", "tiny", "--layers", 1, "--device", "cpu", "--samples", 4, "--ref-samples", 0,
                     "--fidelity-prompts", 0, "--output-cap", 4, "--growth-reserve", 0, "--out", tmp_path / "out"],
                    tmp_path, timeout=300, script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["growth_reserve"] == 0.0
