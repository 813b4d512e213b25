"""tools/steady_state.py on a hand-made step log, and tools/bench.py's table carrying its figures.

The step log (decode only, sequences, tokens, ms, decodes): a prefill ramp, four steps at the largest batch (one
of them mixed, so the last prefill is step 3), then a drain of three steps. Worked out by hand: steady = the 16
decodes of the full-batch steps over their 80 ms = 200 tok/s; drain = 20 of 190 ms; extrapolated to 24,576
samples from 8: 10 tokens in 0.2 s of which 0.02 s drain -> 10 * 3072 / (0.18 * 3072 + 0.02) = 55.55."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import steady_state  # noqa: E402
from mlperf_llama2.errors import run_cli  # noqa: E402

STEP_LOG = [[0, 2, 102, 100.0, 2], [1, 4, 4, 10.0, 4], [1, 4, 4, 10.0, 4], [0, 4, 54, 50.0, 4],
            [1, 4, 4, 10.0, 4], [1, 2, 2, 5.0, 2], [1, 1, 1, 5.0, 1]]
ROW = {"backend": "engine", "batch": 4, "samples": 8, "tokens_per_s": 50.0, "wall_s": 0.2, "step_log": STEP_LOG}


def test_steady_rate_drain_and_extrapolation_by_hand():
    got = steady_state.analyse(ROW)
    assert got["largest_batch"] == 4 and got["full_batch_steps"] == 4 and got["steps"] == 7
    assert got["steady_tokens_per_s"] == 200
    assert got["drain_share"] == round(20 / 190, 3)
    assert got["extrapolated_24576"] == round(10 * 3072 / (0.18 * 3072 + 0.02))  # 56


def test_a_run_that_never_stops_prefilling_has_no_drain():
    log = [[0, 2, 50, 10.0, 2], [0, 2, 40, 10.0, 2]]
    got = steady_state.analyse({**ROW, "step_log": log})
    assert got["drain_share"] == 0.0 and got["steady_tokens_per_s"] == 200  # 4 decodes in 20 ms


def test_bench_table_prints_the_steady_columns():
    import bench

    args = SimpleNamespace(shape="70b", weights="int8", samples=8, lengths_from=None)
    cfg = SimpleNamespace(num_hidden_layers=80)
    engine_row = {**ROW, "steady": steady_state.analyse(ROW)}
    ref_row = {"backend": "reference", "batch": 4, "samples": 8, "tokens_per_s": 5.0}
    result = {"rows": [ref_row, engine_row]}
    lines = bench.table_lines(args, cfg, "torch.float16", np.array([10.0]), np.array([5.0]), result, roof=100.0)
    header = next(line for line in lines if line.startswith("backend"))
    assert header.split()[-3:] == ["steady", "drain", "->24,576"]
    engine_line = next(line for line in lines if line.startswith("engine"))
    assert engine_line.split()[-6:] == ["50", "10.00x", "50%", "200", f"{round(20 / 190, 3):.0%}", "56"]
    ref_line = next(line for line in lines if line.startswith("reference"))
    assert ref_line.split()[-3:] == ["-", "-", "-"]
    assert lines[0].startswith("shape 70b layers 80 torch.float16 weights int8;")
    fast = SimpleNamespace(**{**vars(args), "weights": "fp8", "fp8_accumulation": "fast"})
    assert bench.table_lines(fast, cfg, "torch.float16", np.array([10.0]), np.array([5.0]), result, roof=100.0)[0] \
        .startswith("shape 70b layers 80 torch.float16 weights fp8 (fast accumulation);")
    assert not any("GPU:" in line for line in lines)  # no clock line where nothing was sampled (a CPU run)
    clock = {"mhz_median": 1647.6, "mhz_min": 1455.0, "mhz_max": 1980.0, "watts_median": 637.0,
             "reasons": ["SwPowerCap"]}
    clocked = {"rows": [ref_row, {**engine_row, "gpu_clock": clock}]}
    lines = bench.table_lines(args, cfg, "torch.float16", np.array([10.0]), np.array([5.0]), clocked, roof=100.0)
    assert "  engine GPU: SM clock median 1,648 MHz (1,455-1,980), power median 637 W, SwPowerCap" in lines
    roofed = {"rows": [{**engine_row, "gpu_clock": clock, "roofline_at_clock_tokens_per_s": 80.0}]}
    lines = bench.table_lines(args, cfg, "torch.float16", np.array([10.0]), np.array([5.0]), roofed, roof=100.0)
    assert any(line.endswith("SwPowerCap; the 8-bit roofline at that clock 80 tok/s, 62% of it") for line in lines)


def test_the_8bit_roofline_scales_its_gemm_time_with_the_sm_clock():
    import bench

    cfg = bench.hf_config_for("70b", 2)
    prompt, output = np.array([400.0, 500.0]), np.array([300.0, 200.0])
    spec = bench.roofline_tokens_per_s(cfg, prompt, output, 2, 2, 1, 1)
    assert bench.roofline_tokens_per_s(cfg, prompt, output, 2, 2, 1, 1, sm_mhz=bench.SPEC_MHZ) == \
        pytest.approx(spec)
    half = bench.roofline_tokens_per_s(cfg, prompt, output, 2, 2, 1, 1, sm_mhz=bench.SPEC_MHZ / 2)
    # tokens / (gemm_s + kv_s): at half the clock the GEMM time doubles and the KV reads' time stays
    per_layer = 2 * 8192 * 8192 * (1 + 8 / 64) + 3 * 8192 * 28672
    gemm_s = 2 * (2 * per_layer + 2 * 32000 * 8192) * (900.0 + 500.0) / 1979e12
    assert 500.0 / half == pytest.approx(500.0 / spec + gemm_s, rel=1e-9)


def test_the_command_line_prints_each_engine_row(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"rows": [{"backend": "reference", "tokens_per_s": 5.0}, ROW]}))
    assert run_cli(steady_state.main, [str(path), "--samples", "16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(str(path))
    got = json.loads(out[0][len(str(path)) + 1:])
    assert got["steady_tokens_per_s"] == 200 and got["extrapolated_16"] == round(20 / (0.18 * 2 + 0.02))


@pytest.mark.parametrize("content,args,message", [
    (None, [], "steady_state: cannot read"),
    ("{not json", [], "steady_state: cannot read"),
    (json.dumps({"rows": [{"backend": "reference"}]}), [], "has no engine Offline row with a step log"),
    (json.dumps({"rows": [ROW]}), ["--samples", "0"], "--samples must be >= 1, got 0"),
])
def test_bad_input_is_one_line(tmp_path, capsys, content, args, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    assert run_cli(steady_state.main, [str(path)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_server_is_also_compared_with_the_offline_extrapolated_to_a_submissions_size(tmp_path):
    # a short Offline's whole-run rate is mostly ramp and drain: the Server summary also divides by the rate
    # steady_state.py extrapolates to 24,576 samples, read from this run or from --offline-json
    import json

    import bench
    import bench_server

    engine_row = {**ROW, "steady": steady_state.analyse(ROW)}
    extrapolated = engine_row["steady"]["extrapolated_24576"]
    assert extrapolated > ROW["tokens_per_s"]
    args = SimpleNamespace(offline_json=None)
    assert bench.offline_reference(args, {"rows": [engine_row]}) == (ROW["tokens_per_s"], "this run", extrapolated)
    earlier = tmp_path / "offline.json"
    earlier.write_text(json.dumps({"rows": [engine_row]}))
    build = dict(shape="70b", layers=None, weights="fp8", kv_cache_dtype="fp8", int8_rules="linear")  # any build:
    args = SimpleNamespace(offline_json=str(earlier), **build)  # the file records none, so it matches each
    assert bench.offline_reference(args, {"rows": []}) == (ROW["tokens_per_s"], str(earlier), extrapolated)
    earlier.write_text(json.dumps({"rows": [ROW]}))  # an Offline row recorded without its steady state
    assert bench.offline_reference(args, {"rows": []})[2] is None
    sweep = {"limits": {"lg_model_name": "llama2-70b", "ttft_ms": 2000, "tpot_ms": 200}, "min_duration_s": 60,
             "offline_tokens_per_s": 100.0, "offline_extrapolated_24576": 160.0, "offline_source": "this run",
             "points": [], "best_qps": 2.0, "best_valid": True, "best_tokens_per_s": 90.0,
             "ratio_to_offline": 0.9, "ratio_to_offline_24576": 90.0 / 160.0}
    last = bench_server.sweep_lines(sweep)[-1]
    assert last.endswith("90 tok/s = 0.90 of Offline (target >= 0.90), 0.56 of that Offline extrapolated to 24,576 "
                         "samples (160 tok/s: what a submission's Offline would show)"), last
    older = {k: v for k, v in sweep.items() if k != "ratio_to_offline_24576"}
    assert bench_server.sweep_lines(older)[-1].endswith("= 0.90 of Offline (target >= 0.90)")
