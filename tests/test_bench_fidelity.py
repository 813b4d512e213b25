"""tools/bench_fidelity.py measures what it claims: in fp32 on CPU the engine's teacher-forced logits,
taken from its own steps (chunked prefill, then the decode path), equal transformers' at every
position, and the decisive checkpoint loads identically into transformers and the engine. The 8-bit
variants (FP8 Linears, FP8 KV cache with engine-calibrated scales per head or per layer, both) run
through the same steps on CPU: their metrics are computed, finite, and differ from the float engine's."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_fidelity  # noqa: E402
from fidelity_variants import CUDA_ONLY, VARIANTS, parse_variants  # noqa: E402

from mlperf_llama2.config import QuantConfig  # noqa: E402
from mlperf_llama2.engine.config import ENGINE_GEMMS, FP8_ACCUMULATIONS, EngineConfig  # noqa: E402
from mlperf_llama2.engine.llm_engine import LLMEngine  # noqa: E402
from mlperf_llama2.errors import UserError  # noqa: E402
from mlperf_llama2.quant.fp8 import Fp8Linear  # noqa: E402

CPU_VARIANTS = ["engine_fp8", "engine_kv_head", "engine_kv_tensor", "engine_fp8_kv_head", "engine_fp8_kv_tensor"]


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid")
    bench_fidelity.main(["--shape", "tiny", "--layers", "2", "--device", "cpu", "--dtype", "float32",
                         "--tf-prompts", "3", "--tf-decode", "5", "--prompts", "3", "--tokens", "6",
                         "--prompt-len", "20,40", "--calib-prompts", "3", "--out", str(out)])
    return json.loads((out / "fidelity.json").read_text()), (out / "table.txt").read_text()


def test_engine_teacher_forced_logits_equal_transformers_in_fp32(fp32_run):
    result, _ = fp32_run
    tf = result["teacher_forced"]
    assert tf["engine"]["decode"]["positions"] == 3 * 5  # the tail really went through decode steps
    assert tf["engine"]["last"]["positions"] == 3
    for region in ("all", "decode", "last"):
        assert tf["engine"][region]["max_abs"] < 1e-4
        assert tf["engine"][region]["top1_agree"] == 1.0
        assert tf["transformers"][region]["max_abs"] == 0.0  # fp32 against itself: the same model


def test_greedy_outputs_identical_in_fp32(fp32_run):
    result, table = fp32_run
    for key in ("engine_vs_reference", "reference_batch16_vs_batch1", "reference_vs_fp32", "engine_vs_fp32"):
        assert result["greedy"][key]["identical"] == 3, key
    assert "engine_vs_reference" in table


def test_every_cpu_variant_measured_against_fp32_and_the_float_engine(fp32_run):
    result, table = fp32_run
    variants = result["teacher_forced"]["variants"]
    assert sorted(variants) == sorted(CPU_VARIANTS)  # "all" on a CPU: no fp8-gemm8/fp8-fast
    positions = result["teacher_forced"]["engine"]["all"]["positions"]
    for name, refs in variants.items():
        for ref in ("vs_fp32", "vs_engine"):
            stats = refs[ref]
            assert stats["all"]["positions"] == positions and stats["decode"]["positions"] == 3 * 5
            for region in ("all", "decode", "last"):
                assert all(math.isfinite(v) for v in stats[region].values()), (name, ref, region)
                assert 0.0 <= stats[region]["top1_agree"] <= 1.0
            # 8 bits move the logits far beyond the float engine's own 1e-4 error against fp32 ...
            assert stats["all"]["max_abs"] > 1e-3, (name, ref)
            assert 0.0 < stats["all"]["mean_rel_std"] < 1.0, (name, ref)  # ... but remain a small error
        # the float engine equals the fp32 truth here, so both references give the same error
        assert refs["vs_fp32"]["all"]["mean_abs"] == pytest.approx(refs["vs_engine"]["all"]["mean_abs"], rel=1e-2)
        assert name in table
    errors = {name: variants[name]["vs_engine"]["all"]["mean_abs"] for name in CPU_VARIANTS}
    assert len({round(e, 9) for e in errors.values()}) == len(errors)  # each variant computes something else


def test_variants_greedy_compared_with_reference_engine_and_fp32(fp32_run):
    result, _ = fp32_run
    greedy = result["greedy"]["variants"]
    assert sorted(greedy) == sorted(CPU_VARIANTS)
    for name, comparisons in greedy.items():
        assert sorted(comparisons) == ["vs_engine", "vs_fp32", "vs_reference"]
        for c in comparisons.values():
            assert c["prompts"] == 3 and 0 <= c["identical"] <= 3
            assert len(c["first_divergence"]) == 3 - c["identical"]


def test_kv_scales_calibrated_per_head_and_per_layer(fp32_run):
    result, table = fp32_run
    scales = result["kv_scales"]
    assert sorted(scales) == ["float", "fp8"]  # each model calibrates its own K/V scales
    for per in scales.values():
        assert per["tensor"]["k_head_spread"] == 1.0 and per["tensor"]["v_head_spread"] == 1.0
        assert per["head"]["k_head_spread"] >= 1.0 and per["head"]["v_head_spread"] >= 1.0
        for g in ("head", "tensor"):
            assert 0.0 < per[g]["k_min"] <= per[g]["k_max"] and 0.0 < per[g]["v_min"] <= per[g]["v_max"]
        # one per-layer scale is the largest of that layer's per-head scales
        assert per["tensor"]["k_max"] == pytest.approx(per["head"]["k_max"])
    assert "KV scales (fp8 model, per head)" in table


def test_variant_names_checked_before_any_model_loads():
    cpu = torch.device("cpu")
    assert [v.name for v in parse_variants("fp8,kv-head", cpu)] == ["fp8", "kv-head"]
    assert parse_variants("none", cpu) == []
    assert set(CUDA_ONLY) <= {v.name for v in parse_variants("all", torch.device("cuda"))}
    with pytest.raises(UserError, match="unknown fp9"):
        parse_variants("fp8,fp9", cpu)
    with pytest.raises(UserError, match="fp8-gemm8: needs --device cuda"):
        parse_variants("fp8,fp8-gemm8", cpu)
    assert set(VARIANTS) >= {"fp8", "kv-head", "kv-tensor", "fp8+kv-head", "fp8+kv-tensor"}


def test_each_cuda_variant_names_its_own_engine_gemm_settings():
    settings = [(VARIANTS[n].engine_gemm, VARIANTS[n].fp8_accumulation) for n in CUDA_ONLY]
    assert len(set(settings)) == len(CUDA_ONLY)  # no two variants measure the same path
    assert all(g in ENGINE_GEMMS and a in FP8_ACCUMULATIONS for g, a in settings)
    assert (VARIANTS["fp8-ws-fast"].engine_gemm, VARIANTS["fp8-ws-fast"].fp8_accumulation) == ("ws", "fast")


def _fp8_model(tiny_model_dir, device: str, dtype: torch.dtype):
    return LLMEngine.from_pretrained(tiny_model_dir, EngineConfig(num_kv_blocks=16, cuda_graphs=False), device,
                                     dtype, quant=QuantConfig(quantization="fp8")).runner.model


def test_a_variant_engine_is_built_with_the_variants_gemm_settings(tiny_model_dir):
    """The engine applies --engine-gemm / --fp8-accumulation to every 8-bit Linear when it is built, so a
    variant's GEMM must be in its EngineConfig (a path set on the Linears beforehand was reset: on 2026-12-06
    that made fp8-ws-fast measure fp8-ws)."""
    model = _fp8_model(tiny_model_dir, "cpu", torch.float32)
    engine = bench_fidelity.engine_for(model, torch.device("cpu"), torch.float32, [[1, 5, 9]], 2, False,
                                       gemm="triton", fp8_accumulation="fast")
    assert (engine.runner.config.gemm, engine.runner.config.fp8_accumulation) == ("triton", "fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gemm,accumulation,path", [("cublas", "promoted", "scaled_mm"),
                                                    ("cublas", "fast", "scaled_mm_fast_accum"),
                                                    ("triton", "fast", "gemm8_fast")])
def test_a_variant_engine_puts_every_fp8_linear_on_its_path(tiny_model_dir, gemm, accumulation, path):
    model = _fp8_model(tiny_model_dir, "cuda", torch.float16)
    engine = bench_fidelity.engine_for(model, torch.device("cuda"), torch.float16, [[1, 5, 9]], 2, False,
                                       gemm=gemm, fp8_accumulation=accumulation)
    assert {m.gemm for m in engine.runner.model.modules() if isinstance(m, Fp8Linear)} == {path}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_the_default_cuda_device_without_a_gpu_is_one_line_before_any_model(tmp_path, capsys):
    from mlperf_llama2.errors import run_cli

    assert run_cli(bench_fidelity.main, ["--shape", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda but torch sees no CUDA GPU" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
