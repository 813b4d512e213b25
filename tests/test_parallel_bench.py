"""tools/bench.py --tensor-parallel / --data-parallel on CPU: every request completes, efficiency is computed."""

from __future__ import annotations

import json

import pytest

from loadgen_fixtures import REPO, run_main

pytestmark = pytest.mark.slow  # two benchmark processes (one with a worker), ~1 minute on 2 shared cores

COMMON = ["--shape", "tiny", "--layers", 2, "--device", "cpu", "--samples", 8, "--output-cap", 6,
          "--max-num-seqs", 8, "--max-num-batched-tokens", 512, "--server-qps", 4, "--server-seconds", 1]


def test_bench_tp2_then_dp2_against_it(tmp_path):
    script = str(REPO / "tools" / "bench.py")
    tp = run_main([*COMMON, "--tensor-parallel", 2, "--out", tmp_path / "tp2"], tmp_path, timeout=300, script=script)
    assert tp.returncode == 0, tp.stderr[-3000:]
    dp = run_main([*COMMON, "--data-parallel", 2, "--baseline-json", tmp_path / "tp2" / "bench.json",
                   "--out", tmp_path / "dp2"], tmp_path, timeout=300, script=script)
    assert dp.returncode == 0, dp.stderr[-3000:]
    tp_json = json.loads((tmp_path / "tp2" / "bench.json").read_text())
    dp_json = json.loads((tmp_path / "dp2" / "bench.json").read_text())
    for result in (tp_json, dp_json):
        assert result["gpus"] == 2
        offline = result["offline"]
        assert offline["samples"] == 8 and offline["failures"] == 0  # LoadGen got every sample back
        assert offline["loadgen_tokens_per_s"] > 0
        assert result["server"][0]["completed"] == result["server"][0]["issued"] >= 1
    assert sorted(dp_json["offline"]["requests_per_replica"]) == [4, 4]  # equal lengths: split evenly
    expected = dp_json["offline"]["tokens_per_s_per_gpu"] / (tp_json["offline"]["tokens_per_s"] / 2)
    assert dp_json["scaling_efficiency"] == pytest.approx(expected)
    assert "scaling efficiency" in dp.stdout


def test_bench_tp2_runs_int8_weights_over_an_int8_kv_cache(tmp_path):
    """--kv-cache-dtype and --weights reach every rank: rank 0's engine allocated an int8 cache and every
    sample came back."""
    proc = run_main([*COMMON, "--weights", "int8", "--ref-samples", 0, "--fidelity-prompts", 0, "--kv-cache-dtype",
                     "int8", "--tensor-parallel", 2, "--out", tmp_path / "tp2"], tmp_path, timeout=300,
                    script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "tp2" / "bench.json").read_text())
    assert result["kv_cache"]["dtype"] == "int8" and result["kv_cache"]["storage"] == ["int8"]
    assert result["offline"]["samples"] == 8 and result["offline"]["failures"] == 0


def test_bench_refuses_the_whole_config_on_several_devices_in_one_line(tmp_path):
    proc = run_main([*COMMON, "--weights", "int8", "--ref-samples", 0, "--fidelity-prompts", 0, "--kv-cache-dtype",
                     "int8", "--int8-rules", "all", "--data-parallel", 2, "--out", tmp_path / "dp2"], tmp_path,
                    timeout=120, script=str(REPO / "tools" / "bench.py"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "--int8-rules all is not wired" in lines[0], proc.stderr
