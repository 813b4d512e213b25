"""--engine-gemm: which GEMM the engine's 8-bit Linears run (auto | cublas | triton | ws), for A/B runs of the
same numbers. The flag reaches every Int8Linear and Fp8Linear of a built model, the warm-up compiles or tunes
every 8-bit Linear (fp8 too), data-parallel nodes get the flag, and misuse (no 8-bit Linears, another backend, a
CPU device, `ws` without a Hopper GPU) is one line and exit 2 before the model loads."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from mlperf_llama2.backends import preflight
from mlperf_llama2.config import RunConfig
from mlperf_llama2.engine.config import ENGINE_GEMMS, EngineConfig
from mlperf_llama2.engine.quant_plan import GEMM_PATHS, apply_gemm, warm_up_gemms
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant import fp8, int8_linear
from mlperf_llama2.quant.config import QuantConfig
from mlperf_llama2.quant.fp8 import Fp8Linear
from mlperf_llama2.quant.int8_linear import Int8Linear
from reliability_fixtures import REPO, error_lines, run

NPM = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")


def _model():
    g = torch.Generator().manual_seed(0)
    return torch.nn.Sequential(Int8Linear.random(16, 24, device="cpu", out_dtype=torch.float32, generator=g),
                               Fp8Linear.from_float(torch.randn(8, 24, generator=g)),
                               torch.nn.Linear(8, 8))


def test_every_choice_names_a_path_each_linear_class_has():
    assert set(GEMM_PATHS) == set(ENGINE_GEMMS)
    for int8_path, fp8_path in GEMM_PATHS.values():
        assert int8_path in int8_linear.GEMM_PATHS and fp8_path in fp8.GEMM_PATHS
    assert GEMM_PATHS["auto"] == (Int8Linear.gemm, Fp8Linear.gemm)  # auto keeps the classes' measured defaults


@pytest.mark.parametrize("choice", ENGINE_GEMMS)
def test_the_choice_reaches_every_8_bit_linear(choice):
    model = _model()
    counts = apply_gemm(model, choice)
    int8_path, fp8_path = GEMM_PATHS[choice]
    assert model[0].gemm == int8_path and model[1].gemm == fp8_path and not hasattr(model[2], "gemm")
    assert sum(counts.values()) == 2 and set(counts) == {int8_path, fp8_path}


def test_warm_up_calls_fp8_linears_too():
    model = _model()
    seen = []
    for layer in model[:2]:
        layer.register_forward_pre_hook(lambda mod, args: seen.append(type(mod).__name__))
    assert warm_up_gemms(model, 4, torch.float32) == 2 * 3  # M 1, 2, 4 for each 8-bit Linear
    assert seen.count("Int8Linear") == 3 and seen.count("Fp8Linear") == 3


def test_flag_parses_and_nodes_receive_it():
    from mlperf_llama2.backends.local_nodes import node_argv

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    assert EngineConfig.from_cli_args(parser.parse_args([])).gemm == "auto"
    assert EngineConfig.from_cli_args(parser.parse_args(["--engine-gemm", "triton"])).gemm == "triton"
    with pytest.raises(UserError, match="--engine-gemm must be one of auto, cublas, triton, ws, got 'cutlass'"):
        EngineConfig(gemm="cutlass")
    cfg = RunConfig(backend="engine", model_path="m", engine=EngineConfig(gemm="ws"))
    argv = node_argv(cfg, "cuda:1")
    assert argv[argv.index("--engine-gemm") + 1] == "ws"


@pytest.mark.parametrize("changes,message", [
    (dict(backend="engine", device="cuda"), "the run has none (add --quantization fp8"),
    (dict(backend="engine", device="cpu", quant=QuantConfig(quantization="fp8")), "--device cpu runs the exact CPU"),
    (dict(backend="reference", quant=QuantConfig(quantization="fp8")), "use --backend engine (--backend reference"),
])
def test_misuse_is_one_line(changes, message):
    cfg = RunConfig(engine=EngineConfig(gemm="triton"), model_path="m", **changes)
    check = preflight.check_engine if cfg.backend == "engine" else preflight.check_reference
    with pytest.raises(UserError) as info:
        check(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9,
                    reason="checks the refusal without a Hopper GPU")
def test_ws_needs_a_hopper_gpu():
    cfg = RunConfig(backend="engine", device="cuda", model_path="m", engine=EngineConfig(gemm="ws"),
                    quant=QuantConfig(liteml_config=NPM, quant_mode="int8"))
    with pytest.raises(UserError, match="--engine-gemm ws is the warp-specialised Hopper GEMM: it needs an sm_90"):
        preflight.check_engine(cfg)


@pytest.mark.parametrize("flags,message", [
    (["--engine-gemm", "triton"], "--engine-gemm triton chooses among CUDA GEMMs"),
    (["--fp8-accumulation", "fast"], "--fp8-accumulation fast is the tensor cores' own accumulation: it needs a "
                                     "CUDA GPU"),
])
def test_main_refuses_before_loading(tmp_path, tiny_tokenizer_dir, tiny_model_dir, flags, message):
    from loadgen_fixtures import write_dataset

    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    result = run(["--backend", "engine", "--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl",
                  "--device", "cpu", "--quantization", "fp8", *flags, "--output-log-dir",
                  tmp_path / "out"], tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "backend: engine" not in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="needs an sm_90 GPU (every --engine-gemm path)")
@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_every_gemm_gives_the_same_tokens_on_gpu(tiny_model_dir, quant):
    """Every --engine-gemm path computes the same numbers, so in each batch composition (its own GEMM shapes,
    small-M and large-M tiles) the tiny model's greedy tokens (fp16, CUDA graphs) are equal across them: int8
    sums are exact, fp8 ones promoted every 128 of K (cuBLASLt's fp8 order differs, so fp8 compares the two
    project kernels)."""
    from quant_engine_fixtures import COMPOSITIONS, prompts

    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.engine.sequence import SamplingParams

    qcfg = (QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", int8_rules="linear")
            if quant == "int8" else QuantConfig(quantization="fp8"))
    outs = {}
    for choice in ("triton", "ws") if quant == "fp8" else ENGINE_GEMMS:  # fp8 cuBLASLt sums in its own order
        for name, comp in sorted(COMPOSITIONS.items()):
            engine = LLMEngine.from_pretrained(tiny_model_dir, dataclasses.replace(comp, gemm=choice), "cuda",
                                               torch.float16, quant=qcfg)
            outs[(choice, name)] = engine.generate(prompts(), SamplingParams(max_new_tokens=12))
    for name in COMPOSITIONS:  # per composition: only the GEMM differs
        runs = {choice: out for (choice, comp), out in outs.items() if comp == name}
        first = next(iter(runs.values()))
        assert all(out == first for out in runs.values()), (name, {k: v[:1] for k, v in runs.items()})


@pytest.mark.parametrize("capability,int8_path,fp8_path", [((9, 0), "gemm8_ws", "gemm8_ws"),
                                                            ((8, 0), "fused", "scaled_mm"),
                                                            ((10, 0), "fused", "scaled_mm")])
def test_auto_is_the_warp_specialised_gemm_on_hopper_only(monkeypatch, capability, int8_path, fp8_path):
    from mlperf_llama2.engine.quant_plan import auto_paths

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert auto_paths(torch.device("cuda", 0)) == (int8_path, fp8_path)
    assert auto_paths(torch.device("cpu")) == GEMM_PATHS["auto"]
    model = torch.nn.Sequential(Int8Linear.random(32, 16, device="cpu"), Int8Linear.random(24, 16, device="cpu"),
                                Fp8Linear.from_float(torch.randn(8, 32)), Fp8Linear.from_float(torch.randn(8, 24)),
                                Fp8Linear.from_float(torch.randn(12, 32)))
    counts = apply_gemm(model, "auto", torch.device("cuda", 0))
    # K = 24 is no multiple of 16, N = 12 none of 8 (TMA strides): those Linears keep their kind's non-TMA GEMM
    assert [m.gemm for m in model] == [int8_path, "fused", fp8_path, "scaled_mm", "scaled_mm"]
    assert counts == {p: [m.gemm for m in model].count(p) for p in {m.gemm for m in model}}


# --fp8-accumulation: Hopper's fast FP8 accumulation as a named option (issue #19), never the default


@pytest.mark.parametrize("choice", ENGINE_GEMMS)
def test_fast_accumulation_moves_only_fp8_linears_to_the_unpromoted_form(choice):
    model = _model()
    counts = apply_gemm(model, choice, fp8_accumulation="fast")
    int8_path, fp8_path = GEMM_PATHS[choice]
    assert model[0].gemm == int8_path  # int8 sums are exact: nothing to choose
    assert model[1].gemm == fp8.FAST_PATHS[fp8_path] and model[1].gemm in fp8.GEMM_PATHS
    assert model[1].gemm.endswith(("_fast", "_fast_accum")) and counts[model[1].gemm] == 1
    assert sum(apply_gemm(model, choice).values()) == 2 and model[1].gemm == fp8_path  # promoted: the default


def test_fast_accumulation_reaches_auto_on_hopper(monkeypatch):
    """auto on sm_90: the warp-specialised GEMM without promotion; a Linear TMA cannot serve (K % 16) keeps
    cuBLASLt, in its fast form."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(Fp8Linear.from_float(torch.randn(8, 32, generator=g)),
                                Fp8Linear.from_float(torch.randn(8, 24, generator=g)))
    assert apply_gemm(model, "auto", torch.device("cuda", 0), "fast") == {"gemm8_ws_fast": 1,
                                                                          "scaled_mm_fast_accum": 1}
    assert (model[0].gemm, model[1].gemm) == ("gemm8_ws_fast", "scaled_mm_fast_accum")


def test_accumulation_flag_parses_is_promoted_by_default_and_reaches_nodes():
    from mlperf_llama2.backends.local_nodes import node_argv

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    assert EngineConfig.from_cli_args(parser.parse_args([])).fp8_accumulation == "promoted"
    assert EngineConfig.from_cli_args(parser.parse_args(["--fp8-accumulation", "fast"])).fp8_accumulation == "fast"
    with pytest.raises(UserError, match="--fp8-accumulation must be one of promoted, fast, got 'fp16'"):
        EngineConfig(fp8_accumulation="fp16")
    argv = node_argv(RunConfig(backend="engine", model_path="m", engine=EngineConfig(fp8_accumulation="fast")),
                     "cuda:0")
    assert argv[argv.index("--fp8-accumulation") + 1] == "fast"


@pytest.mark.parametrize("changes,message", [
    (dict(backend="engine", device="cuda"), "--fp8-accumulation fast is the accumulation of FP8 GEMMs: add "
                                            "--quantization fp8"),
    (dict(backend="engine", device="cuda", quant=QuantConfig(liteml_config=NPM, quant_mode="int8")),
     "--fp8-accumulation fast is the accumulation of FP8 GEMMs"),
    (dict(backend="engine", device="cpu", quant=QuantConfig(quantization="fp8")),
     "it needs a CUDA GPU (--device cpu runs the exact float32 reference GEMM)"),
    (dict(backend="reference", quant=QuantConfig(quantization="fp8")),
     "--fp8-accumulation fast is the engine's FP8 GEMM: use --backend engine (--backend reference has none)"),
])
def test_fast_accumulation_misuse_is_one_line(changes, message):
    cfg = RunConfig(engine=EngineConfig(fp8_accumulation="fast"), model_path="m", **changes)
    check = preflight.check_engine if cfg.backend == "engine" else preflight.check_reference
    with pytest.raises(UserError) as info:
        check(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_fp8_log_line_and_summary_say_which_accumulation(caplog):
    from mlperf_llama2.engine.quant_plan import weight_plan
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.report.summary import RunSummary, render_table

    shape = LlamaShape(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=64)
    with caplog.at_level("INFO", logger="mlperf_llama2.engine.quant_plan"):
        weight_plan(QuantConfig(quantization="fp8"), shape, EngineConfig())
        weight_plan(QuantConfig(quantization="fp8"), shape, EngineConfig(fp8_accumulation="fast"))
    lines = [r.getMessage() for r in caplog.records if "fp8 mode" in r.getMessage()]
    assert "float32 accumulation" in lines[0] and "fast" not in lines[0]
    assert "Hopper's fast low-precision accumulation, not promoted (--fp8-accumulation fast)" in lines[1]
    base = dict(scenario="Offline", mode="PerformanceOnly", samples=1, tokens_per_s=1.0, ttft_p50_ms=None,
                ttft_p99_ms=None, tpot_p50_ms=None, tpot_p99_ms=None, verdict="VALID", reason=None, loadgen_errors=0,
                max_new_tokens=1024, rouge=None, targets=None, model="m", quantization="fp8")
    fast = render_table(RunSummary(**base, fp8_accumulation="fast"))
    assert "fp8 (E4M3 weights per channel, activations per token; Hopper's fast accumulation, not promoted)" in fast
    assert "None mode" not in render_table(RunSummary(**base))
