"""Engine K/V calibration follows the one definition simulate follows: equal ranges, equal scales, one file."""

import dataclasses
import pandas as pd
import pytest
import torch

from loadgen_fixtures import REPO, run_main, write_dataset
from mlperf_llama2.config import QuantConfig
from mlperf_llama2.engine.kv_calibration import calibrate_kv_ranges, calibrate_kv_scales, write_kv_calibration
from mlperf_llama2.engine.llama import LlamaShape
from mlperf_llama2.engine.loader import build_model, read_config
from mlperf_llama2.engine.quant_plan import int8_plan
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.calibration_file import (K_SLOT, V_SLOT, check_scales_file, config_id, kv_scales_from_file,
                                                  read_scales)
from mlperf_llama2.quant.open_backend import quantize_model
from mlperf_llama2.quant.setup import plan_quantization
from mlperf_llama2.quant.yaml_config import load_rules

KV_RULES = """\
QAT:
  data_quantization: {{quantization_mode: static, observer: {observer}}}
  custom_quantization:
{linear}    - source_module: LiteMLMatmul
      source_name: matmul_qkt
      destination_module: QuantMatmul
      params:
        quantizer_in2: {{act_bits: 8, act_dynamic: Off, observer: {observer}, dims: [0, -1, -2, -3]}}
    - source_module: LiteMLMatmul
      source_name: matmul_pv
      destination_module: QuantMatmul
      params:
        quantizer_in2: {{act_bits: 8, act_dynamic: Off, observer: {observer}, dims: [0, -1, -2, -3]}}
"""
W8A8_LINEAR = """\
    - source_module: torch.nn.Linear
      destination_module: LinearQuant
      params:
        weights_quantizer: {weight_bits: 8, dims: []}
        act_quantizer: {act_bits: 8, act_dynamic: On, observer: MinMax, dims: [-1]}
"""


def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 13, 9, 21)]


def kv_rules(tmp_path, observer, w8a8=False):
    path = tmp_path / f"kv_{observer}_{w8a8}.yaml"
    path.write_text(KV_RULES.format(observer=observer, linear=W8A8_LINEAR if w8a8 else ""))
    return load_rules(str(path))


def simulate_kv_ranges(model_dir, rules):
    """The simulate path's K and V observers after calibrating on prompts(), each prompt a (1, len) sample."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    quantize_model(model, rules, "simulate", calibration=[torch.tensor(p)[None, :] for p in prompts()])
    out = []
    for template in (K_SLOT, V_SLOT):
        qs = [model.get_submodule(template.format(layer=i)) for i in range(model.config.num_hidden_layers)]
        out.append((torch.stack([q.running_min.reshape(()) for q in qs]),
                    torch.stack([q.running_max.reshape(()) for q in qs])))
    return torch.stack([out[0][0], out[1][0]]), torch.stack([out[0][1], out[1][1]])  # [2, L] each


def engine_model(model_dir, rules=None):
    cfg = read_config(str(model_dir))
    plan = int8_plan(LlamaShape.from_hf_config(cfg), rules) if rules is not None else {}
    return build_model(cfg, plan, torch.device("cpu"), torch.float32, 64, model_path=str(model_dir))


@pytest.mark.parametrize("observer", ["MinMax", "MovingAverage"])
def test_engine_kv_ranges_equal_simulate_observers(tiny_model_dir, tmp_path, observer):
    rules = kv_rules(tmp_path, observer)
    sim_min, sim_max = simulate_kv_ranges(tiny_model_dir, rules)
    ranges = calibrate_kv_ranges(engine_model(tiny_model_dir), prompts(), observer, momentum=0.01)
    assert ranges.samples == 4 and ranges.head_min.shape == (2, 2, 2)  # K/V, 2 layers, 2 KV heads
    assert torch.allclose(ranges.tensor_min, sim_min, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ranges.tensor_max, sim_max, rtol=1e-5, atol=1e-6)
    assert torch.all(sim_max > 0) and torch.all(sim_min < 0)
    if observer == "MinMax":  # per tensor = the extreme over heads; a moving average does not commute with it
        assert torch.equal(ranges.tensor_max, ranges.head_max.amax(-1))


def test_engine_int8_kv_scales_equal_simulate_with_w8a8_linears(tiny_model_dir, tmp_path):
    rules = kv_rules(tmp_path, "MinMax", w8a8=True)
    sim_min, sim_max = simulate_kv_ranges(tiny_model_dir, rules)
    scales = calibrate_kv_scales(engine_model(tiny_model_dir, rules), prompts(), 127.0, granularity="tensor")
    expected = torch.maximum(sim_min.abs(), sim_max.abs()) / 127.0  # [2, L]
    assert scales.shape == (2, 2, 2)
    assert torch.allclose(scales, expected[:, :, None].expand(2, 2, 2), rtol=1e-4)


def test_kv_file_round_trip_and_granularity(tiny_model_dir, tmp_path):
    ranges = calibrate_kv_ranges(engine_model(tiny_model_dir), prompts())
    path = write_kv_calibration(str(tmp_path / "kv.safetensors"), ranges, "fp8-kv", str(tiny_model_dir),
                                None, "MinMax", 0.01)
    meta = read_scales(path).metadata
    assert meta["config_id"] == "fp8-kv" and meta["calibration_rows"] == "4" and meta["writer"] == "engine"
    per_head = kv_scales_from_file(path, 2, 2, "head", 448.0)
    assert torch.equal(per_head, torch.maximum(ranges.head_min.abs(), ranges.head_max.abs()) / 448.0)
    per_tensor = kv_scales_from_file(path, 2, 2, "tensor", 127.0)
    assert torch.allclose(per_tensor[:, :, 0], per_head.amax(-1) * 448.0 / 127.0, rtol=1e-6)
    assert torch.equal(per_tensor[:, :, 0], per_tensor[:, :, 1])
    with pytest.raises(UserError, match=r"K/V ranges are \(2, 2, 2\), the model needs \(2, 80, 8\)"):
        kv_scales_from_file(path, 80, 8, "head", 448.0)


def test_engine_calibrates_alone_from_the_pickle_and_writes_a_checked_file(tiny_model_dir, tiny_tokenizer_dir,
                                                                           tmp_path):
    npm = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    pd.read_pickle(tmp_path / "data.pkl").iloc[:3].to_pickle(tmp_path / "cal.pkl")
    out = tmp_path / "kv.safetensors"
    result = run_main(["--model-path", tiny_model_dir, "--calibration-path", tmp_path / "cal.pkl", "--out", out,
                       "--liteml-config", npm], tmp_path, 300, script="tools/calibrate_kv.py")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibrated 22 static quantizers on 3 prompts (engine, int8 mode)" in result.stderr
    meta = check_scales_file(str(out), config_id(npm), str(tiny_model_dir))
    assert meta["writer"] == "engine-whole-config" and meta["calibration_rows"] == "3"
    assert kv_scales_from_file(str(out), 2, 2, "tensor", 127.0).shape == (2, 2, 2)
    qc = QuantConfig(liteml_config=npm, quant_backend="open", calibration_scales=str(out))
    plan = plan_quantization(qc, str(tmp_path / "data.pkl"), "cpu", 2, model_path=str(tiny_model_dir))
    assert plan.scales_path == str(out)  # every static quantizer of the config is in it: simulate reuses it
    kv_only = tmp_path / "kv_only.safetensors"
    assert run_main(["--model-path", tiny_model_dir, "--calibration-path", tmp_path / "cal.pkl", "--out", kv_only,
                     "--name", "fp8-kv"], tmp_path, 300, script="tools/calibrate_kv.py").returncode == 0
    with pytest.raises(UserError, match=r"calibrated for config fp8-kv \(fp8-kv\), not this run.s"):
        plan_quantization(dataclasses.replace(qc, calibration_scales=str(kv_only)), str(tmp_path / "data.pkl"),
                          "cpu", 2, model_path=str(tiny_model_dir))
    bad = run_main(["--model-path", tiny_model_dir, "--calibration-path", tmp_path / "none.pkl", "--out", out,
                    "--name", "fp8-kv"], tmp_path, 120, script="tools/calibrate_kv.py")
    assert bad.returncode == 2 and "none.pkl" in bad.stderr.strip().splitlines()[-1]
