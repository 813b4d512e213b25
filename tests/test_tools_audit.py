"""The benchmark tools and the demo given careless or hostile input: every printed figure says which device made it
and what it is, a window too short to measure is a line saying so (never a division by zero or a NaN table), a bad
argument is one line and a non-zero exit, and an engine flag given to a backend without the engine is refused even
when its value happens to equal a default."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from loadgen_fixtures import REPO
from mlperf_llama2.backends import preflight
from mlperf_llama2.config import RunConfig, build_parser
from mlperf_llama2.errors import UserError, run_cli

sys.path.insert(0, str(REPO / "tools"))


def config_of(*argv) -> RunConfig:
    return RunConfig.from_cli_args(build_parser().parse_args([str(a) for a in argv]))


# ---- main.py: --max-num-seqs outside the engine ----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--max-num-seqs", 256], ["--max-num-seqs", 512], ["--max-num-seqs", 64],
                                  ["--scenario", "Interactive", "--max-num-seqs", 256],
                                  ["--scenario", "Server", "--max-num-seqs", 256]])
def test_max_num_seqs_equal_to_a_default_is_still_refused_outside_the_engine(argv):
    """256 is the dataclass default and 512/256/128 the scenarios' defaults: preflight compares values, so these
    were accepted by the reference backend and silently ignored."""
    with pytest.raises(UserError, match=r"--max-num-seqs \d+ is a flag of the engine.*--backend reference"):
        config_of("--backend", "reference", "--device", "cpu", *argv)
    with pytest.raises(UserError, match=r"--max-num-seqs \d+ .*--backend api"):
        config_of("--backend", "api", "--api-server", "http://x:1", *argv)
    with pytest.raises(UserError, match=r"--max-num-seqs \d+ .*each SUT node builds its own engine"):
        config_of("--sut-nodes", "http://x:1", *argv)
    with pytest.raises(UserError, match=r"--max-num-seqs \d+ .*--backend reference"):  # CPU's default backend
        config_of("--device", "cpu", *argv)


def test_max_num_seqs_reaches_the_engine_and_other_backends_run_without_it(tiny_model_dir):
    assert config_of("--backend", "engine", "--device", "cpu", "--max-num-seqs", 256).engine.max_num_seqs == 256
    preflight.check_reference(config_of("--backend", "reference", "--device", "cpu", "--model-path", tiny_model_dir))
    assert config_of("--device", "cpu").backend == "reference"  # the CPU default, without the flag: fine


# ---- tools/bench_scaling.py -------------------------------------------------------------------------------------

def scaling_args(**over):
    args = dict(shape="tiny", tensor_parallel=2, data_parallel=1, device="cpu", samples=8, server_auto=0,
                offline_json=None, server_min_queries=1, server_samples=2048, row_groups=None, layers=2,
                weights="fp16", kv_cache_dtype="auto", interactive=False)
    args.update(over)
    return SimpleNamespace(**args)


SCALING_RESULT = {"gpus": 2, "device_name": "2x NVIDIA H100 80GB HBM3", "devices": ["NVIDIA H100 80GB HBM3"] * 2,
                  "offline": {"tokens_per_s": 2000.0, "tokens_per_s_per_gpu": 1000.0},
                  "server_limits": {"name": "server", "ttft_ms": 2000.0, "tpot_ms": 200.0}}


def test_the_scaling_table_names_the_devices_and_their_clocks_as_the_json_does():
    import bench_scaling

    cfg = SimpleNamespace(num_hidden_layers=2)
    clock = {"mhz_median": 1500.0, "mhz_min": 1400.0, "mhz_max": 1980.0, "watts_median": 650.0,
             "watts_limit": 700.0, "reasons": ["SwPowerCap"]}
    result = {**SCALING_RESULT, "offline": {**SCALING_RESULT["offline"], "gpu_clock": [clock, {}]}}
    lines = bench_scaling.table_lines(scaling_args(), cfg, "torch.float16", result)
    assert lines[1] == "device 2x NVIDIA H100 80GB HBM3"
    assert "  Offline GPU 0: SM clock median 1,500 MHz (1,400-1,980), power median 650 W of a 700 W limit, " \
           "SwPowerCap" in lines
    assert not any(line.startswith("  Offline GPU 1") for line in lines)  # no samples: no line
    assert bench_scaling.devices_label(["a", "a"]) == "2x a" and bench_scaling.devices_label(["a", "b"]) == "a, b"
    assert bench_scaling.device_names(scaling_args(data_parallel=2, tensor_parallel=1)) == ["cpu", "cpu"]


def test_a_server_point_that_lost_requests_never_meets_the_limits_and_prints():
    import bench_scaling
    import bench_server

    lost = {"issued": 10, "completed": 7, "tokens": 70, "seconds": 1.0, "tokens_per_s": 70.0,
            "ttft_p99_ms": 10.0, "tpot_p99_ms": 1.0, "qps": 10.0}
    assert not bench_scaling.meets_limits(lost, bench_server.SERVER)
    assert bench_scaling.meets_limits({**lost, "completed": 10}, bench_server.SERVER)
    none = {**lost, "completed": 0, "tokens": 0, "tokens_per_s": 0.0, "ttft_p99_ms": None, "tpot_p99_ms": None,
            "error": "RuntimeError: boom"}
    rows = [{**lost, "meets_server": False}, {**none, "meets_server": False}]
    lines = bench_scaling.table_lines(scaling_args(), SimpleNamespace(num_hidden_layers=2), "torch.float16",
                                      {**SCALING_RESULT, "server": rows})
    assert any("3 of 10 requests lost" in line and line.endswith("server no") for line in lines)
    assert any("none of 10 requests completed (RuntimeError: boom)" in line for line in lines)


def test_interactive_limits_judge_the_multi_gpu_server_points():
    import bench_scaling
    import bench_server

    row = {"issued": 4, "completed": 4, "ttft_p99_ms": 600.0, "tpot_p99_ms": 30.0}
    assert bench_scaling.meets_limits(row, bench_server.SERVER)
    assert not bench_scaling.meets_limits(row, bench_server.INTERACTIVE)  # 600 ms > 450 ms TTFT


def test_a_baseline_is_read_and_checked_before_anything_is_built(tmp_path):
    import bench_scaling

    args = scaling_args()
    with pytest.raises(SystemExit, match="--baseline-json .*missing.json: cannot read"):
        bench_scaling.read_baseline(str(tmp_path / "missing.json"), args)
    other = tmp_path / "70b.json"
    other.write_text(json.dumps({"args": {"shape": "70b", "layers": 2}, "gpus": 2, "offline": {"tokens_per_s": 5}}))
    with pytest.raises(SystemExit, match="ran --shape 70b, this run tiny"):
        bench_scaling.read_baseline(str(other), args)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"args": {"shape": "tiny"}, "rows": [{"backend": "reference", "tokens_per_s": 3}]}))
    with pytest.raises(SystemExit, match="has no Offline engine tokens/s"):
        bench_scaling.read_baseline(str(empty), args)
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"args": {"shape": "tiny", "layers": 2}, "rows": [{"backend": "engine",
                                                                                   "tokens_per_s": 300.0}]}))
    assert bench_scaling.read_baseline(str(one), args) == {"path": str(one), "gpus": 1, "tokens_per_s_per_gpu": 300.0}


@pytest.mark.parametrize("over,flag", [({"server_auto": 3}, "--server-auto"), ({"samples": 0}, "--samples 0"),
                                       ({"offline_json": "x.json"}, "--offline-json"),
                                       ({"server_min_queries": 500}, "--server-min-queries"),
                                       ({"row_groups": False}, "--row-groups/--no-row-groups")])
def test_bench_flags_the_multi_gpu_benchmark_would_ignore_are_refused(over, flag):
    import bench_scaling

    with pytest.raises(SystemExit, match=f"{flag} is not wired into the multi-GPU benchmark"):
        bench_scaling.check_args(scaling_args(**over))
    bench_scaling.check_args(scaling_args())


@pytest.mark.parametrize("argv,message", [
    (["--baseline-json", "b.json"], "--baseline-json gives the scaling efficiency of a multi-GPU run"),
    (["--data-parallel", 2, "--baseline-json", "missing.json"], "--baseline-json missing.json: cannot read"),
    (["--tensor-parallel", 0], "--tensor-parallel and --data-parallel must be >= 1"),
    (["--data-parallel", 2, "--server-auto", 2, "--server-qps", 1], "--server-auto is not wired"),
])
def test_bench_refuses_before_any_model_is_built(tmp_path, monkeypatch, argv, message):
    import bench

    monkeypatch.chdir(tmp_path)
    base = ["--shape", "tiny", "--layers", 1, "--device", "cpu", "--samples", 4, "--ref-samples", 0,
            "--fidelity-prompts", 0, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=message):
        bench.main([str(a) for a in base + argv])
    assert not (tmp_path / "out").exists()


# ---- tools/steady_state.py and tools/bench.py's table -----------------------------------------------------------

ROW = {"backend": "engine", "batch": 4, "samples": 8, "tokens_per_s": 50.0, "wall_s": 0.2}


@pytest.mark.parametrize("step_log,why", [
    ([[0, 4, 40, 30.0, 4], [1, 2, 2, 5.0, 2]], "1 full-batch step"),  # one step at the largest batch
    ([[0, 4, 40, 0.0, 4], [1, 4, 4, 0.0, 4]], "no time"),  # a log of zero-length steps
])
def test_a_steady_window_too_short_is_a_note_not_a_rate(step_log, why):
    import bench
    import steady_state

    got = steady_state.analyse({**ROW, "step_log": step_log})
    assert got["steady_tokens_per_s"] is None and why in got["note"]
    row = {**ROW, "step_log": step_log, "steady": got}
    lines = bench.table_lines(SimpleNamespace(shape="tiny", weights="fp16", samples=8, lengths_from=None),
                              SimpleNamespace(num_hidden_layers=2), "torch.float32", np.array([10.0]),
                              np.array([5.0]), {"rows": [row]}, roof=100.0)
    engine = next(line for line in lines if line.startswith("engine"))
    assert engine.split()[6] == "-" and "nan" not in "\n".join(lines).lower()
    assert any(line.startswith("  engine steady state: steady window too short") for line in lines)


def test_the_bench_table_prints_no_nan_for_a_gpu_figure_a_cpu_run_lacks():
    import bench

    lines = bench.table_lines(SimpleNamespace(shape="tiny", weights="fp16", samples=8, lengths_from=None),
                              SimpleNamespace(num_hidden_layers=2), "torch.float32", np.array([10.0]),
                              np.array([5.0]), {"rows": [], "memory": {"weights_gib": 0.1}}, roof=1.0)
    assert "nan" not in "\n".join(lines) and "GPU free before the engine n/a (no GPU)" in lines[1]


# ---- tools/sched_sim.py -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--blocks", 100, "--max-num-seqs", 4, "--samples", 0, "--c0-ms", 1, "--c1-ms", 0], "--samples must be >= 1"),
    (["--blocks", 0, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", 1, "--c1-ms", 0], "--blocks must be >= 1"),
    (["--blocks", 100, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", 1, "--c1-ms", 0, "--block-size", 0],
     "--block-size must be >= 1"),
    (["--blocks", 4000, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", -10, "--c1-ms", 0], "--c0-ms must be"),
    (["--blocks", 4000, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", 0, "--c1-ms", 0],
     "every step must take some time"),
    (["--blocks", 1, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", 1, "--c1-ms", 0], "does not fit the KV cache"),
    (["--blocks", 4000, "--max-num-seqs", 4, "--samples", 8, "--c0-ms", 1, "--c1-ms", 0, "--server-qps", "nan"],
     "--server-qps must be a finite number > 0"),
])
def test_sched_sim_bad_sizes_and_models_are_one_line(tmp_path, capsys, argv, message):
    import sched_sim

    assert run_cli(sched_sim.main, [str(a) for a in argv] + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_sched_sim_samples_zero_is_not_replaced_by_the_bench_runs(tmp_path, capsys):
    """`--samples 0` used to fall back to the bench.json's sample count silently (`or`)."""
    import sched_sim

    bench = {"args": {"samples": 16, "seed": 0, "max_num_seqs": 8, "max_num_batched_tokens": 8192},
             "rows": [{"backend": "engine", "kv_blocks": 4000,
                       "step_log": [[0, 4, 40 + i, 20.0 + 0.01 * i, 4] for i in range(20)]}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert run_cli(sched_sim.main, ["--from-bench", str(path), "--samples", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--samples must be >= 1, got 0" in capsys.readouterr().err


# ---- the demo ---------------------------------------------------------------------------------------------------

def test_a_damaged_gguf_is_one_line_and_leaves_no_model(tmp_path):
    from mlperf_llama2.demo import model as demo_model

    gguf = tmp_path / demo_model.GGUF_FILE_NAME
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # a header that ends mid-field
    with pytest.raises(UserError, match="GGUF|gguf") as err:
        demo_model.prepare_demo_model(str(tmp_path / "model"), str(gguf))
    assert "\n" not in str(err.value) and ("reinstall" in str(err.value) or "pip install" in str(err.value))
    assert not (tmp_path / "model").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".demo-model-")]  # staging removed


def test_the_demo_note_says_whose_scores_a_run_are(tmp_path, tiny_model_dir, capsys):
    from mlperf_llama2.demo import __main__ as demo_main
    from mlperf_llama2.demo import model as demo_model

    demo_dir = tmp_path / "demo-model"
    demo_dir.mkdir()
    info = demo_model.DemoModelInfo("SmolLM2-135M-Instruct", "apache-2.0", "x.gguf", "0", 1, 2, 49152)
    (demo_dir / demo_model.MARKER_FILE).write_text(json.dumps(info.__dict__))
    run = tmp_path / "logs"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"model_path": str(demo_dir)}))
    assert run_cli(demo_main.main, ["note", str(run)]) == 0
    out = capsys.readouterr().out.strip()
    assert "SmolLM2-135M-Instruct demo" in out and "NOT of Llama-2-70B" in out
    (run / "run_info.json").write_text(json.dumps({"model_path": str(tiny_model_dir)}))
    assert run_cli(demo_main.main, ["note", str(run)]) == 0
    assert "not the embedded demo model" in capsys.readouterr().out
    assert run_cli(demo_main.main, ["note", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run_info.json: cannot read" in err and "\n" not in err
