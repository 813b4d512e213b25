"""Open backend, simulate mode: slots inside a loaded transformers Llama, every rule applied exactly."""

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fake_quant import FakeQuantizer, Numerics, fake_quant
from mlperf_llama2.quant.llama_slots import install_slots
from mlperf_llama2.quant.open_backend import quantize_model
from mlperf_llama2.quant.yaml_config import QuantRules, load_rules

pytestmark = pytest.mark.tf_compat  # the LiteML wheel's transformers 4.46 too

NPM = str(Path(__file__).resolve().parents[2] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
PROMPTS = torch.tensor([[1, 5, 9, 100, 200, 300, 7, 8], [1, 6, 10, 101, 201, 301, 7, 9]])  # [2, 8]


def load(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def calibration():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 500, (1, n), generator=g) for n in (6, 11, 17)]


def no_rules(tmp_path):
    """Rules that quantize nothing (a config file cannot say this: an empty custom_quantization is refused)."""
    return QuantRules(path=str(tmp_path / "off.yaml"), rules=(), quantization_mode="dynamic", fully_quantized=False)


@torch.no_grad()
def test_every_rule_off_equals_transformers_llama(tiny_model_dir, tmp_path):
    reference, model = load(tiny_model_dir), load(tiny_model_dir)
    quantize_model(model, no_rules(tmp_path))
    assert torch.allclose(model(PROMPTS).logits, reference(PROMPTS).logits, atol=1e-5, rtol=1e-5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])  # left padding, as the reference backend pads
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(PROMPTS, **kwargs), reference.generate(PROMPTS, **kwargs))


@torch.no_grad()
def test_npm_simulate_linear_is_fake_quant_input_times_frozen_fake_quant_weight(tiny_model_dir):
    original = load(tiny_model_dir)
    model = load(tiny_model_dir)
    quantize_model(model, load_rules(NPM), "simulate", calibration=calibration())
    w = original.model.layers[1].mlp.down_proj.weight  # [N, K]
    qlin = model.model.layers[1].mlp.down_proj
    x = torch.randn(3, 5, w.shape[1])
    xq = fake_quant(x, x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), 8, True, Numerics())
    wq = fake_quant(w, w.min(), w.max(), 8, True, Numerics())
    assert torch.equal(qlin.weight, wq)
    assert len(torch.unique(qlin.weight)) <= 255
    assert torch.allclose(qlin(x), F.linear(xq, wq), atol=1e-6)


@torch.no_grad()
def test_npm_simulate_calibrates_every_static_quantizer_and_generates(tiny_model_dir):
    model = load(tiny_model_dir)
    report = quantize_model(model, load_rules(NPM), "simulate", calibration=calibration())
    assert report.calibration_samples == 3
    static = [m for m in model.modules() if isinstance(m, FakeQuantizer) and not m.spec.dynamic]
    assert len(static) == 2 * 11 and all(q.calibrated and not q.calibrating for q in static)
    layer = model.model.layers[0]
    assert layer.self_attn.matmul_qkt.quantizer_in2.running_max.numel() == 1  # K per tensor
    assert type(layer.add_1).__name__ == "QuantAddCommonScalePerToken"
    out1 = model.generate(PROMPTS, max_new_tokens=6, do_sample=False)
    out2 = model.generate(PROMPTS, max_new_tokens=6, do_sample=False)
    assert torch.equal(out1, out2) and out1.shape == (2, 14)


@torch.no_grad()
def test_residual_add_uses_one_per_token_scale_for_both_inputs(tiny_model_dir):
    model = load(tiny_model_dir)
    quantize_model(model, load_rules(NPM), "simulate", calibration=calibration())
    add = model.model.layers[0].add_1
    a = torch.tensor([[[1000.0, 0.01]]])  # [1, 1, 2]: large residual
    b = torch.tensor([[[0.0, 0.01]]])  # small update: at a shared 16-bit scale of 1000/32767 it rounds to 0
    assert add(a, b)[0, 0, 1].item() == pytest.approx(0.0, abs=1e-6)


@torch.no_grad()
def test_static_config_without_calibration_data_is_refused(tiny_model_dir):
    with pytest.raises(UserError, match="calibration"):
        quantize_model(load(tiny_model_dir), load_rules(NPM), "simulate", calibration=None)


def test_slots_refuse_a_non_llama():
    with pytest.raises(UserError, match="Llama"):
        install_slots(torch.nn.Linear(2, 2))
