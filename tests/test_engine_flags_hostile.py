"""Engine flags and tools/bench.py given by a careless or hostile user: every bad value or combination is one line
before a model loads, never a run that silently ran (or recorded) another setting than the one asked for."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from loadgen_fixtures import REPO, run_main
from mlperf_llama2.backends import preflight
from mlperf_llama2.config import build_parser, RunConfig
from mlperf_llama2.data.dataset import Dataset
from mlperf_llama2.engine.config import EngineConfig
from mlperf_llama2.errors import UserError

sys.path.insert(0, str(REPO / "tools"))


def config_of(*argv) -> RunConfig:
    return RunConfig.from_cli_args(build_parser().parse_args([str(a) for a in argv]))


# ---- main.py: engine flags ----------------------------------------------------------------------------------------

def test_fused_elementwise_ops_on_a_cpu_are_refused_before_the_model_loads():
    """--engine-ops fused is Triton kernels: on a CPU the first step failed after the model loaded (no triton, or
    Triton refusing CPU tensors)."""
    config = config_of("--backend", "engine", "--device", "cpu", "--engine-ops", "fused")
    with pytest.raises(UserError, match="--engine-ops fused .*--device cpu"):
        preflight.check_engine(config)


@pytest.mark.parametrize("argv", [[], ["--num-kv-blocks", "64"]])
def test_the_cpu_default_kv_cache_is_checked_against_the_longest_prompt_too(argv):
    """Without --num-kv-blocks the CPU engine has a fixed 512 blocks: with --block-size 1 that is 512 slots, and a
    400-token prompt + 1024 new tokens was refused by the scheduler only after the model loaded (a failed sample)."""
    config = config_of("--backend", "engine", "--device", "cpu", "--block-size", 1, *argv)
    dataset = Dataset(path="x.pkl", prompts=((1,) * 400,), targets=None)
    blocks = 64 if argv else 512
    with pytest.raises(UserError, match=f"{blocks} .*--block-size 1.*400 tokens"):
        preflight.check_engine_capacity(config, dataset)
    preflight.check_engine_capacity(config_of("--backend", "engine", "--device", "cpu"), dataset)  # 8,192 slots


@pytest.mark.parametrize("align,budget", [(8192, 8192), (16384, 8192), (512, 256)])
def test_a_prefill_alignment_the_token_budget_never_exceeds_is_refused(align, budget):
    """A step is at most --max-num-batched-tokens; steps of at most --prefill-align tokens are left as they are, so
    an alignment >= the budget never trimmed a step: accepted and silently without effect."""
    with pytest.raises(UserError, match=f"--prefill-align {align} .*--max-num-batched-tokens {budget}"):
        EngineConfig(prefill_align=align, max_num_batched_tokens=budget)
    assert EngineConfig(prefill_align=128, max_num_batched_tokens=8192).prefill_align == 128


ENGINE_ONLY = [
    (["--max-num-seqs", "64"], "--max-num-seqs 64"),
    (["--max-num-batched-tokens", "512"], "--max-num-batched-tokens 512"),
    (["--block-size", "32"], "--block-size 32"),
    (["--num-kv-blocks", "100"], "--num-kv-blocks 100"),
    (["--kv-cache-memory-fraction", "0.5"], "--kv-cache-memory-fraction 0.5"),
    (["--engine-ops", "eager"], "--engine-ops eager"),
    (["--prefill-align", "128"], "--prefill-align 128"),
    (["--no-cuda-graphs"], "--no-cuda-graphs"),
    (["--no-overlap-steps"], "--no-overlap-steps"),
]


@pytest.mark.parametrize("argv,flag", ENGINE_ONLY)
def test_engine_flags_given_to_another_backend_are_one_line(argv, flag):
    """The reference backend (and an API server) has no engine: these were accepted and ignored."""
    with pytest.raises(UserError, match=f"{flag}.*--backend reference"):
        preflight.check_reference(config_of("--backend", "reference", "--device", "cpu", *argv))
    with pytest.raises(UserError, match=f"{flag}.*--backend api"):
        preflight.check_api(config_of("--backend", "api", "--api-server", "http://x:1", *argv))
    with pytest.raises(UserError, match=f"{flag}.*each SUT node builds its own engine"):
        preflight.check_sut_nodes(config_of("--sut-nodes", "http://x:1", *argv))


@pytest.mark.parametrize("scenario", ["Offline", "Server", "Interactive"])
def test_the_reference_backend_passes_without_engine_flags(scenario, tiny_model_dir):
    preflight.check_reference(config_of("--backend", "reference", "--device", "cpu", "--scenario", scenario,
                                        "--model-path", tiny_model_dir))
    preflight.check_sut_nodes(config_of("--sut-nodes", "http://x:1", "--scenario", scenario))


@pytest.mark.parametrize("argv,message", [
    (["--device", "cpu"], "--kv-cache-memory-fraction 0.5 .*--device cpu"),
    (["--device", "cpu", "--num-kv-blocks", "64"], "--kv-cache-memory-fraction 0.5 .*--num-kv-blocks 64"),
])
def test_a_memory_fraction_the_engine_would_not_use_is_refused(argv, message):
    """The fraction sizes the KV cache from free GPU memory: with --num-kv-blocks, or on a CPU (512 blocks), it was
    ignored."""
    with pytest.raises(UserError, match=message):
        preflight.check_engine(config_of("--backend", "engine", "--kv-cache-memory-fraction", "0.5", *argv))


# ---- tools/bench.py ------------------------------------------------------------------------------------------------

def test_bench_table_names_the_weights_that_ran_and_the_device():
    """On a CPU the random model is float32: the table said `torch.float32 weights fp16`."""
    import bench

    args = SimpleNamespace(shape="tiny", weights="fp16", samples=8, lengths_from=None)
    cfg = SimpleNamespace(num_hidden_layers=2)
    result = {"rows": [], "device_name": "cpu"}
    first = bench.table_lines(args, cfg, "torch.float32", np.array([10.0]), np.array([5.0]), result, roof=1.0)[0]
    assert "weights fp32" in first and "weights fp16" not in first
    assert bench.weights_label("fp16", "torch.float16") == "fp16"
    assert bench.weights_label("int8", "torch.float16") == "int8"
    lines = bench.table_lines(args, cfg, "torch.float32", np.array([10.0]), np.array([5.0]), result, roof=1.0)
    assert any(line.startswith("device cpu;") and "H200" in line for line in lines)  # whose roofline it is


@pytest.mark.parametrize("flags,message", [
    (["--layers", 0], "--layers must be >= 1, got 0"),
    (["--layers", -2], "--layers must be >= 1, got -2"),
    (["--output-cap", 0], "--output-cap must be >= 1, got 0"),
    (["--samples", -1], "--samples must be >= 0, got -1"),
    (["--ref-samples", -1], "--ref-samples must be >= 0, got -1"),
    (["--fidelity-prompts", -1], "--fidelity-prompts must be >= 0, got -1"),
    (["--fidelity-tokens", 0], "--fidelity-tokens must be >= 1, got 0"),
    (["--max-num-seqs", 0], "--max-num-seqs must be >= 1, got 0"),
    (["--max-num-batched-tokens", 0], "--max-num-batched-tokens must be >= 1, got 0"),
    (["--ref-batch-sizes", "0"], "--ref-batch-sizes"),
    (["--ref-batch-sizes", "a"], "--ref-batch-sizes"),
    (["--prefill-align", 8192], "--prefill-align 8192"),
    (["--server-qps", 4, "--server-seconds", 0], "--server-seconds must be > 0"),
    (["--server-qps", 4, "--server-samples", 0], "--server-samples must be >= 1, got 0"),
    (["--server-qps", "4,-1"], "--server-qps"),
    (["--server-auto", -1, "--server-qps", 4], "--server-auto must be >= 0, got -1"),
])
def test_bench_refuses_bad_sizes_before_building_anything(tmp_path, flags, message):
    import bench

    argv = ["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts", 0,
            "--out", tmp_path / "out"]
    # a later flag wins: the one under test overrides the defaults above
    with pytest.raises(SystemExit) as exc:
        bench.main([str(a) for a in argv + flags])
    assert message in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_bench_refusal_is_one_line_and_non_zero(tmp_path):
    proc = run_main(["--shape", "tiny", "--device", "cpu", "--samples", 4, "--ref-samples", 0, "--fidelity-prompts",
                     0, "--layers", 0, "--out", tmp_path / "out"], tmp_path, timeout=120,
                    script=str(REPO / "tools" / "bench.py"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--layers must be >= 1, got 0" in lines[0], proc.stderr[-2000:]


def test_bench_engine_offline_with_failed_samples_prints_no_tokens_per_s(tmp_path, tiny_model_dir, monkeypatch):
    """The engine row's tokens/s is every forced output length over the wall time: with failed samples it counted
    tokens nobody generated (the reference rows are dropped in that case)."""
    import bench_paths

    from mlperf_llama2.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_pretrained(str(tiny_model_dir), EngineConfig(num_kv_blocks=64))
    monkeypatch.setattr(bench_paths, "loadgen_offline", lambda backend, prompts, out_dir: {
        "samples": 2, "wall_s": 1.0, "failures": 1, "loadgen_tokens_per_s": None})
    result = {"rows": []}
    args = SimpleNamespace(max_num_seqs=4, samples=2)
    with pytest.raises(SystemExit, match="1 of 2 samples failed"):
        bench_paths.engine_offline(args, engine, [[1, 5, 6], [1, 7]], np.array([3, 4]), 100.0, result, str(tmp_path))
    assert result["rows"] == []


@pytest.mark.parametrize("flag", ["--tensor-parallel", "--data-parallel"])
def test_parallel_flags_given_to_a_backend_without_an_engine_are_one_line(flag, tiny_model_dir):
    """Only the engine splits over GPUs: `--backend reference --tensor-parallel 2` ran on one device, exit 0, and an
    API backend ignored it too, so the run looked like the parallel layout it never had."""
    with pytest.raises(UserError, match=f"{flag} 2 .*--backend reference would ignore it"):
        preflight.check_reference(config_of("--backend", "reference", "--device", "cpu", flag, 2,
                                            "--model-path", tiny_model_dir))
    with pytest.raises(UserError, match=f"{flag} 2 .*--backend api would ignore it"):
        preflight.check_api(config_of("--backend", "api", "--api-server", "http://x:1", flag, 2))
    preflight.check_reference(config_of("--backend", "reference", "--device", "cpu", flag, 1,
                                        "--model-path", tiny_model_dir))


def test_a_sut_node_runs_its_backends_preflight(tiny_model_dir, capsys):
    """`python -m mlperf_llama2.sut_node` checked only the checkpoint: a node started with `--backend reference
    --tensor-parallel 2` (or an engine-only flag) served on one device and main.py's run looked parallel."""
    from mlperf_llama2 import sut_node

    with pytest.raises(UserError, match="--tensor-parallel 2 .*--backend reference would ignore it"):
        sut_node.main(["--backend", "reference", "--device", "cpu", "--model-path", str(tiny_model_dir),
                       "--tensor-parallel", "2", "--port", "0"])
    with pytest.raises(UserError, match="--kv-cache-dtype fp8 .*--backend reference"):
        sut_node.main(["--backend", "reference", "--device", "cpu", "--model-path", str(tiny_model_dir),
                       "--kv-cache-dtype", "fp8", "--port", "0"])


@pytest.mark.parametrize("backend", ["engine", "reference"])
def test_half_away_rounding_in_int8_mode_is_refused_before_the_model_loads(backend, tiny_model_dir):
    """int8 mode's Linears round half to even: --quant-rounding half_away reached only the other rules (the engine
    refused it once the weights were being quantized; the reference backend ran it and recorded half_away)."""
    npm = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
    config = config_of("--backend", backend, "--device", "cpu", "--model-path", tiny_model_dir, "--liteml-config",
                       npm, "--quant-backend", "open", "--quant-mode", "int8", "--quant-rounding", "half_away")
    check = preflight.check_engine if backend == "engine" else preflight.check_reference
    with pytest.raises(UserError, match="--quant-rounding half_away with --quant-mode int8"):
        check(config)
