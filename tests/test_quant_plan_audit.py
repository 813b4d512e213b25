"""Audit of how a LiteML YAML becomes what is computed: a setting the loader would drop, a conflict it would resolve
silently, or a rule the engine computes differently from simulate is one clear error or the same numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
HEADER = "QAT:\n  data_quantization: {quantization_mode: dynamic}\n  custom_quantization:\n"
ADD = "- {source_module: LiteMLAdd, source_name: %s, destination_module: %s, params: {%s}}"
LINEAR = "- {source_module: torch.nn.Linear, destination_module: LinearQuant, params: {%s}}"


def write(tmp_path: Path, rules: str, header: str = HEADER) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(header + textwrap.indent(rules + "\n", "    "))
    return str(path)


# each was accepted, and the run then ignored a setting, picked one of two, or failed after the model loaded
@pytest.mark.parametrize("rule, message", [
    (LINEAR % "weights_quantizer: {act_bits: 4}", "weights_quantizer: act_bits is not read by a weights quantizer; "
                                                  "use weight_bits"),
    (LINEAR % "act_quantizer: {weight_bits: 4, dims: [-1]}", "act_quantizer: weight_bits is not read by an "
                                                              "activation quantizer; use act_bits"),
    (LINEAR % "act_quantizer: {bits: 4, act_bits: 8, dims: [-1]}", "act_quantizer: bits: 4 and act_bits: 8 disagree"),
    (LINEAR % "weights_quantizer: {dynamic: Off}", "weights_quantizer: dynamic: False; weights are quantized once"),
    (LINEAR % "act_quantizer: {act_dynamic: On, observer: MovingAverage, dims: [-1]}",
     "observer MovingAverage on a dynamic quantizer"),
    (LINEAR % "act_quantizer: {act_per_channel: On, dims: []}", "act_per_channel: On, but dims [] is one scale"),
    (LINEAR % "act_quantizer: {act_per_channel: 'no', dims: [-1]}", "per_channel must be a boolean"),
    (ADD % ("add_1", "QuantAddCommonScalePerToken", "quantizer: {status: Off}"),
     "quantizer is status: Off, but QuantAddCommonScalePerToken needs it"),
    (ADD % ("add_1", "QuantAddCommonScalePerToken", "quantizer: {status: disabled, dims: [-1]}"),
     "quantizer: status must be On or Off, got 'disabled'"),
    (ADD % ("add_mask", "QuantAddSoftmaxMask", "quantizer_in1: {act_bits: 16}, quantizer: {act_bits: 8}"),
     "quantizer and quantizer_in1 name the same quantizer of QuantAddSoftmaxMask"),
    ("- {source_module: torch.nn.SiLU, destination_module: SingleInputQuantActivation, "
     "params: {quantizer: {act_bits: 16}, act_quantizer: {act_bits: 8}}}",
     "act_quantizer and quantizer name the same quantizer of SingleInputQuantActivation"),
    ("- {source_module: LiteMLMatmul, source_name: [matmul_qkt, matmul_pv], destination_module: QuantMatmul}",
     "source_name must be one module name"),
    ("- {source_module: LiteMLMatmul, source_name: 3, destination_module: QuantMatmul}",
     "source_name must be one module name"),
])
def test_a_setting_the_loader_would_drop_or_pick_is_one_line(tmp_path, rule, message):
    with pytest.raises(UserError) as info:
        load_rules(write(tmp_path, rule))
    text = str(info.value)
    assert message in text and "custom_quantization rule 0" in text and "\n" not in text, text


@pytest.mark.parametrize("key", ["symmetric", "per_channel"])
def test_a_quoted_global_off_is_not_read_as_on(tmp_path, key):
    header = HEADER.replace("{quantization_mode: dynamic}", "{quantization_mode: dynamic, %s: 'Off'}" % key)
    with pytest.raises(UserError, match=f"QAT.data_quantization.{key} must be On or Off, got 'Off'"):
        load_rules(write(tmp_path, LINEAR % "act_quantizer: {dims: [-1]}", header))


def test_consistent_spellings_still_load(tmp_path):
    rules = load_rules(write(tmp_path, LINEAR % "weights_quantizer: {bits: 8, weight_bits: 8}, act_quantizer: "
                                                "{bits: 8, act_bits: 8, act_per_channel: On, dims: [-1], "
                                                "observer: MinMax}"))
    assert rules.rules[0].quantizer("act_quantizer").dims == (-1,)
    load_rules(NPM)


ROPE = ("- {source_module: LiteMLAdd, source_name: rotary_add_q, destination_module: QuantAdd, params: {"
        "quantizer_in1: {act_bits: 4, dims: [%s]}, quantizer_in2: {act_bits: 4, dims: [%s]}}}")


@pytest.mark.parametrize("dims", ["1, 3", "-3"], ids=["per-position-over-heads", "reduce-heads"])
def test_engine_rope_quantizers_see_simulates_axes(tiny_model_dir, tmp_path, dims):
    """A RoPE add's dims name the axes of simulate's [B, heads, S, D]; the engine gave its slots [1, T, heads, D], so
    axis 1 was the sequence there, and the same rule computed other scales (logits off by 0.2-0.4 of their std)."""
    from transformers import LlamaForCausalLM

    from mlperf_llama2.config import EngineConfig, QuantConfig
    from mlperf_llama2.engine.attention import AttentionMetadata
    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.quant.fake_quant import Numerics
    from mlperf_llama2.quant.open_backend import quantize_model

    config = write(tmp_path, ROPE % (dims, dims))
    sim = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    quantize_model(sim, load_rules(config), "simulate", Numerics(batch_shared_scale=False))
    quant = QuantConfig(liteml_config=config, quant_backend="open", quant_mode="int8", batch_shared_scale=False)
    model = LLMEngine.from_pretrained(tiny_model_dir, EngineConfig(max_num_seqs=2, max_num_batched_tokens=64,
                                                                   block_size=16, num_kv_blocks=8),
                                      "cpu", torch.float32, quant=quant).runner.model
    ids = torch.tensor([1, 17, 300, 45, 99, 3, 250, 7, 8, 120])
    t = ids.shape[0]
    cache = torch.zeros(2, model.shape.num_layers, t, model.shape.num_kv_heads, model.shape.head_dim)
    with torch.no_grad():
        ours = model.logits(model(ids, torch.arange(t), cache, AttentionMetadata.single_prefill(t, "cpu")))
        theirs = sim(ids[None]).logits[0]
    assert (ours - theirs).abs().max() / theirs.std() < 1e-4


def test_engine_int8_mode_refuses_a_rounding_its_int8_linears_do_not_use():
    from mlperf_llama2.config import QuantConfig
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.quant_plan import weight_plan

    shape = LlamaShape(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=64)
    with pytest.raises(UserError, match="--quant-rounding half_away with --quant-mode int8: the engine's int8 "
                                        "Linears round half to even"):
        weight_plan(QuantConfig(liteml_config=NPM, quant_mode="int8", rounding="half_away"), shape)
    assert set(weight_plan(QuantConfig(liteml_config=NPM, quant_mode="int8"), shape).values()) == {"int8"}


def test_calibrate_kv_tool_calibrates_a_config_whose_static_quantizers_are_not_k_or_v(tiny_model_dir,
                                                                                    tiny_tokenizer_dir, tmp_path):
    """tools/calibrate_kv.py --liteml-config calibrates every static quantizer of the config; a config with dynamic
    K and V but a static `mul` was refused as 'nothing to calibrate'."""
    from loadgen_fixtures import write_dataset
    from mlperf_llama2.engine.kv_calibration import calibrate_engine
    from mlperf_llama2.quant import calibration_file as cf

    config = write(tmp_path, "- {source_module: LiteMLMul, source_name: mul, destination_module: QuantMul, params: {"
                             "quantizer_in1: {act_bits: 16, act_dynamic: Off, dims: []}}}")
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    pd.read_pickle(tmp_path / "data.pkl").iloc[:2].to_pickle(tmp_path / "cal.pkl")
    out = calibrate_engine(str(tiny_model_dir), str(tmp_path / "cal.pkl"), str(tmp_path / "s.safetensors"), config)
    assert sorted(cf.read_scales(out).tensors) == sorted(f"model.layers.{i}.mlp.mul.quantizer_in1.{end}"
                                                         for i in range(2) for end in ("min", "max"))
    with pytest.raises(UserError, match="has no static K or V quantizer: each static quantizer uses its own rule"):
        calibrate_engine(str(tiny_model_dir), str(tmp_path / "cal.pkl"), str(tmp_path / "t.safetensors"), config,
                         observer="MinMax")
    dynamic = write(tmp_path, LINEAR % "act_quantizer: {dims: [-1]}")
    with pytest.raises(UserError, match="no rule has a static quantizer; nothing to calibrate"):
        calibrate_engine(str(tiny_model_dir), str(tmp_path / "cal.pkl"), str(tmp_path / "u.safetensors"), dynamic)


MASK_RULE = "destination_module: QuantAddSoftmaxMask\n      params:\n"
MASK16 = "{act_bits: 16, act_symmetric: On, act_dynamic: Off, observer: MovingAverage, dims: !!python/tuple []}"


@pytest.mark.parametrize("edit, slot", [
    (("quantizer_in2: {act_bits: 8, act_symmetric: On, act_dynamic: Off",
      "quantizer_in2: {act_bits: 8, act_symmetric: Off, act_dynamic: Off"), "K: int8 symmetric static per tensor"),
    ((MASK_RULE, f"destination_module: QuantAdd\n      params:\n        quantizer_in2: {MASK16}\n"),
     "add_mask without a mask or output quantizer"),
], ids=["asymmetric-K", "mask-quantizer"])
def test_the_kernels_refuse_a_quantizer_they_would_drop(tiny_model_dir, tmp_path, edit, slot):
    """The fused path took an asymmetric K rule for the symmetric int8 cache (same scale: the K quantizer was then
    symmetric), and a QuantAdd on add_mask without its mask quantizer; both are now left to the eager path, which
    computes them as simulate does."""
    from mlperf_llama2.engine import whole_config
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import build_model, read_config
    from mlperf_llama2.engine.quant_plan import int8_plan
    from mlperf_llama2.quant.fake_quant import Numerics

    text = Path(NPM).read_text()
    assert edit[0] in text
    config = tmp_path / "edited.yaml"
    config.write_text(text.replace(edit[0], edit[1], 1))
    rules = load_rules(str(config))
    hf_config = read_config(str(tiny_model_dir))
    model = build_model(hf_config, int8_plan(LlamaShape.from_hf_config(hf_config), rules), torch.device("cpu"),
                        torch.float32, 64, model_path=str(tiny_model_dir))
    wc = whole_config.attach(model, rules, Numerics(batch_shared_scale=False))
    whole_config.calibrate(model, [[1, 5, 9, 100, 7, 3], [1, 44, 2, 300]])
    slots = wc.layers[0]
    kv = torch.tensor([[whole_config._static_scale(slots.attn[m].quantizer_in2)] * model.shape.num_kv_heads
                       for m in ("matmul_qkt", "matmul_pv")])  # [2, KV]: the cache holding the rule's own scales
    with pytest.raises(whole_config._Unsupported, match=slot):
        whole_config.layer_kernel_args(slots, kv, "cpu")


STATIC = "{act_bits: 8, act_dynamic: Off, dims: [%s]}"


@pytest.mark.parametrize("rule, slot, axis", [
    ("- {source_module: LiteMLMul, source_name: mul, destination_module: QuantMul, params: {quantizer_in1: %s}}"
     % (STATIC % "-1"), "model.layers.0.mlp.mul", 1),
    ("- {source_module: LiteMLMatmul, source_name: model.layers.1.self_attn.matmul_qkt, destination_module: "
     "QuantMatmul, params: {quantizer_in2: %s}}" % (STATIC % "0, 1, 2"), "model.layers.0.self_attn.matmul_qkt", 3),
    ("- {source_module: LiteMLAdd, source_name: add_mask, destination_module: QuantAddSoftmaxMask, "
     "params: {quantizer_in1: %s}}" % (STATIC % "0, 1, 3"), "model.layers.0.self_attn.add_mask", 2),
], ids=["per-token-mul", "K-per-key", "scores-per-query"])
def test_a_static_scale_that_keeps_a_sequence_axis_is_refused(tmp_path, rule, slot, axis):
    """Simulate calibrated such a quantizer to the calibration prompts' length: a run of another length then failed
    with a broadcasting RuntimeError, and one-token calibration prompts gave every position the first one's range."""
    with pytest.raises(UserError) as info:
        load_rules(write(tmp_path, rule))
    assert f"static with dims" in str(info.value) and f"sequence axis {axis} " in str(info.value) and \
        slot in str(info.value), str(info.value)


def test_static_scales_that_reduce_the_sequence_axes_load(tmp_path):
    per_feature = ("- {source_module: LiteMLMul, source_name: mul, destination_module: QuantMul, params: "
                   "{quantizer_in1: %s, quantizer_in2: %s}}" % (STATIC % "0, 1", STATIC % ""))
    per_head_k = ("- {source_module: LiteMLMatmul, source_name: matmul_qkt, destination_module: QuantMatmul, params: "
                  "{quantizer_in2: %s}}" % (STATIC % "0, 2, 3"))
    assert len(load_rules(write(tmp_path, per_feature + "\n" + per_head_k)).rules) == 2
