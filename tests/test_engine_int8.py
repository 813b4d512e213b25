"""The engine's int8 mode (CPU: the quant package's exact integer GEMM) against the quant package.

Comparable reference: transformers' Llama quantized by the quant package in simulate mode with the
Linear rule of w8a8_npm_v1_3_4 only (the rules int8 mode computes; the engine leaves the others out
and says so). Simulate fake-quantizes weights per tensor and activations per token in float; the
engine runs int8 x int8 -> int32 exactly, then rescales: the two differ only by float rounding, so
greedy tokens on the decisive tiny fixture are equal. Also: the engine's int8 weights (fused QKV and
gate/up with one scale per projection) equal the quant package's quantization of each projection;
every batch composition gives the same tokens; main.py `--backend engine --quant-mode int8` under
LoadGen answers with them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mlperf_llama2 import constants
from loadgen_fixtures import SMALL_USER_CONF, read_accuracy_log, run_main, summary, tokens, write_dataset
from quant_engine_fixtures import COMPOSITIONS, NEW_TOKENS, greedy_reference, prompts
from mlperf_llama2.config import QuantConfig
from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.loader import build_model, empty_model, load_weights
from mlperf_llama2.engine.quant_plan import engine_rules, int8_plan, left_out
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.int8_linear import Int8Linear, quantize_weight
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
INT8 = QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="int8", int8_rules="linear")
def linear_rules_only():
    rules = load_rules(NPM)
    return dataclasses.replace(rules, rules=tuple(r for r in rules.rules if r.source_kind == "Linear"))


@pytest.fixture(scope="module")
def simulate_tokens(tiny_model_dir):
    from transformers import LlamaForCausalLM

    from mlperf_llama2.quant.open_backend import quantize_model

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    report = quantize_model(model, linear_rules_only(), "simulate")
    assert report.replaced["LinearQuant"] == 7 * model.config.num_hidden_layers + 1  # q k v o gate up down; lm_head
    return greedy_reference(model)


@pytest.mark.parametrize("composition", sorted(COMPOSITIONS))
def test_int8_engine_matches_simulate_mode_in_every_composition(tiny_model_dir, simulate_tokens, composition):
    engine = LLMEngine.from_pretrained(tiny_model_dir, COMPOSITIONS[composition], "cpu", torch.float32,
                                       quant=INT8)
    linears = [m for m in engine.runner.model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 4 * engine.runner.model.shape.num_layers + 1  # fused QKV, o, gate/up, down; lm_head
    outs = engine.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    assert outs == simulate_tokens


def test_int8_weights_equal_the_quant_package_quantization(tiny_model_dir):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine = LLMEngine.from_pretrained(tiny_model_dir, COMPOSITIONS["roomy"], "cpu", torch.float32,
                                       quant=INT8)
    model = engine.runner.model
    for i, layer in enumerate(model.layers):
        src = hf.model.layers[i]
        for fused, parts in ((layer.qkv_proj, (src.self_attn.q_proj, src.self_attn.k_proj, src.self_attn.v_proj)),
                             (layer.o_proj, (src.self_attn.o_proj,)), (layer.gate_up_proj, (src.mlp.gate_proj,
                                                                                             src.mlp.up_proj)),
                             (layer.down_proj, (src.mlp.down_proj,))):
            expected = [quantize_weight(p.weight) for p in parts]
            assert torch.equal(fused.qweight, torch.cat([q for q, _ in expected]))
            assert torch.equal(fused.weight_scale, torch.cat([s for _, s in expected]))
            assert fused.split_sizes == tuple(p.out_features for p in parts)
        assert len(torch.unique(layer.qkv_proj.weight_scale)) == 3  # one scale per projection
    q, s = quantize_weight(hf.lm_head.weight)
    assert torch.equal(model.lm_head.qweight, q) and torch.equal(model.lm_head.weight_scale, s)


def test_left_out_rules_are_every_non_linear_rule():
    rules = load_rules(NPM)
    shape = LlamaShape(32000, 8192, 28672, 80, 64, 8, 128, 1e-5, 4096)
    plan = int8_plan(shape, rules)
    assert len(plan) == 4 * 80 + 1 and set(plan.values()) == {"int8"}  # every Linear int8, weights per tensor
    notes = left_out(rules, plan)
    assert len(notes) == sum(r.source_kind != "Linear" for r in rules.rules) >= 10
    assert any("matmul_pv" in n for n in notes) and any("RMSNorm" in n for n in notes)


def test_random_int8_model_has_no_float_linear_weights():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    shape = LlamaShape.from_hf_config(cfg)
    model = build_model(cfg, int8_plan(shape, load_rules(NPM)), torch.device("cpu"), torch.float32, 128, init_std=0.05)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert all(m.qweight.dtype == torch.int8 and m.weight_scale.dtype == torch.float32 for m in int8)
    w = model.layers[0].gate_up_proj.dequantized_weight()
    assert model.layers[0].gate_up_proj.split_sizes == (96, 96) and abs(w.std().item() - 0.05) < 0.005


def test_engine_quant_config_must_be_int8_open():
    assert engine_rules(QuantConfig()) is None
    with pytest.raises(UserError, match="--quant-mode int8"):
        engine_rules(QuantConfig(liteml_config=NPM, quant_backend="open", quant_mode="simulate"))
    with pytest.raises(UserError, match="open backend only"):
        engine_rules(QuantConfig(liteml_config=NPM, quant_backend="liteml", quant_mode="int8"))


@pytest.mark.parametrize("rules", ["linear", "all"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_main_engine_int8_under_loadgen_answers_with_the_int8_tokens(tmp_path, tiny_tokenizer_dir, tiny_model_dir,
                                                                      device, rules):
    """The issue's accuracy run in int8 mode: CPU (exact int64 GEMM) and CUDA (fused Triton GEMM, CUDA graphs,
    overlapped steps), each equal to the engine called directly on the same device. `--int8-rules all` (the
    default) calibrates the whole config on the pickle beside the dataset, writes its scales file, and leaves
    nothing out; the direct engine reuses that file."""
    import pandas as pd

    from mlperf_llama2.data.dataset import load_dataset

    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    pd.read_pickle(tmp_path / "data.pkl").iloc[:3].to_pickle(tmp_path / "calibration_1000.pkl")
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    result = run_main(["--backend", "engine", "--model-path", tiny_model_dir, "--dataset-path", tmp_path / "data.pkl",
                       "--user-conf", tmp_path / "user.conf", "--max-new-tokens", 8, "--output-log-dir", "out",
                       "--num-kv-blocks", 256, "--max-num-batched-tokens", 32, "--no-progress", "--accuracy",
                       "--device", device, "--dtype", "float32", "--liteml-config", NPM, "--quant-backend", "open",
                       "--quant-mode", "int8", "--int8-rules", rules], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("int8 mode leaves out" in result.stderr) == (rules == "linear")
    assert "No errors encountered" in summary(tmp_path / "out")
    answers = {e["qsl_idx"]: tokens(e["data"]).tolist() for e in read_accuracy_log(tmp_path / "out")}
    quant = INT8
    if rules == "all":
        assert "calibrated 22 static quantizers on 3 prompts" in result.stderr
        quant = dataclasses.replace(INT8, int8_rules="all",
                                    calibration_scales=str(tmp_path / "out" / "calibration_scales.safetensors"))
    engine = LLMEngine.from_pretrained(tiny_model_dir, COMPOSITIONS["roomy"], device, torch.float32, quant=quant)
    direct = engine.generate(load_dataset(str(tmp_path / "data.pkl")).prompts,
                             SamplingParams(max_new_tokens=8, min_new_tokens=constants.MIN_NEW_TOKENS))
    assert answers == dict(enumerate(direct))


def test_gemm_warm_up_covers_every_m_bucket_and_both_alignments():
    from mlperf_llama2.engine.quant_plan import warm_up_gemms

    model = torch.nn.Sequential(Int8Linear.random(16, 24, device="cpu", out_dtype=torch.float32),
                                Int8Linear.random(16, 24, device="cpu", out_dtype=torch.float32),
                                Int8Linear.random(24, 8, device="cpu", out_dtype=torch.float32))
    seen = []
    for layer in model:
        layer.register_forward_pre_hook(lambda mod, args: seen.append((mod.in_features, args[0].shape[0])))
    calls = warm_up_gemms(model, 100, torch.float32)
    rows = [1, 2, 4, 8, 16, 32, 31, 64, 63, 100, 99]  # powers of two below 100 (and one less from 32), then 100
    assert calls == 2 * len(rows) and seen == [(16, r) for r in rows] + [(24, r) for r in rows]


def _tiny_hf(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def _int8_engine_model(hf):
    shape = LlamaShape.from_hf_config(hf.config)
    plan = int8_plan(shape, load_rules(NPM))
    return empty_model(hf.config, plan, torch.device("cpu"), torch.float32, 64), plan, shape


def test_tied_lm_head_is_the_quantized_embedding():
    hf = _tiny_hf(tie=True)
    model, plan, shape = _int8_engine_model(hf)
    weights = [(n, t) for n, t in hf.state_dict().items() if n != "lm_head.weight"]
    load_weights(model, weights, plan, shape)
    q, s = quantize_weight(hf.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.qweight, q) and torch.equal(model.lm_head.weight_scale, s)
    assert torch.equal(model.embed_tokens.weight, hf.model.embed_tokens.weight)  # the embedding stays float


def test_a_checkpoint_without_a_projection_is_refused():
    hf = _tiny_hf(tie=False)
    model, plan, shape = _int8_engine_model(hf)
    weights = [(n, t) for n, t in hf.state_dict().items() if n != "model.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(UserError, match=r"lacks 1 tensor\(s\).*layers.1.qkv_proj.weight \(part 1\)"):
        load_weights(model, weights, plan, shape)
