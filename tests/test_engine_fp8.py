"""`--quantization fp8`: the engine's FP8 Linears against the simulate path (the accuracy reference).

Simulate = transformers' Llama with every Linear but lm_head replaced by `Fp8SimulatedLinear`
(dequantized E4M3 weights and per-token activations, a float32 matmul). The engine runs the e4m3
values through its own GEMM path (CPU: float32 GEMM of the e4m3 values, then the rescale; CUDA:
cuBLASLt `_scaled_mm`), fused QKV and gate/up keeping one scale per output channel. The two differ
only by float32 summation order and the place of the rescale, so greedy tokens on the decisive
tiny fixture are equal in every batch composition (chunked prefill, preemption).
"""

from __future__ import annotations

import pytest
import torch

from quant_engine_fixtures import COMPOSITIONS, NEW_TOKENS, greedy_reference, prompts
from mlperf_llama2.config import QuantConfig
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fp8 import (FP8_DTYPE, Fp8Linear, fake_quant_linear, quantize_rows_fp8,
                                     quantize_weight_fp8, reference_gemm, simulate_fp8)

FP8 = QuantConfig(quantization="fp8")
@pytest.fixture(scope="module")
def simulate_tokens(tiny_model_dir):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert simulate_fp8(model) == 7 * model.config.num_hidden_layers  # every Linear but lm_head
    return greedy_reference(model)


@pytest.mark.parametrize("composition", sorted(COMPOSITIONS))
def test_fp8_engine_matches_the_simulate_path_in_every_composition(tiny_model_dir, simulate_tokens, composition):
    engine = LLMEngine.from_pretrained(tiny_model_dir, COMPOSITIONS[composition], "cpu", torch.float32, FP8)
    model = engine.runner.model
    assert sum(isinstance(m, Fp8Linear) for m in model.modules()) == 4 * model.shape.num_layers
    assert type(model.lm_head) is torch.nn.Linear
    outs = engine.generate(prompts(), SamplingParams(max_new_tokens=NEW_TOKENS))
    assert outs == simulate_tokens
    assert (engine.runner.flat_steps > 0) == (composition == "flat_rows")


def test_fp8_quantization_is_per_channel_and_per_token_with_saturation():
    w = torch.tensor([[1.0, -2.0, 448.0 * 3], [0.0, 0.0, 0.0]])
    q, s = quantize_weight_fp8(w)
    assert q.dtype == FP8_DTYPE and torch.equal(s, torch.tensor([3.0, torch.finfo(torch.float32).tiny]))
    assert q[0, 2].float().item() == 448.0 and torch.equal(q[1].float(), torch.zeros(3))  # a zero row stays zero
    x = torch.tensor([[0.5, 1000.0], [-3.0, 1.0]])
    qx, sx = quantize_rows_fp8(x)
    assert torch.allclose(sx, torch.tensor([1000.0 / 448, 3.0 / 448]))
    assert qx[0, 1].float().item() == 448.0 and qx[1, 0].float().item() == -448.0


def test_engine_gemm_equals_simulate_to_float_rounding():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(9, 64, generator=g), torch.randn(40, 64, generator=g)
    q, s = quantize_weight_fp8(w)
    qx, sx = quantize_rows_fp8(x)
    torch.testing.assert_close(reference_gemm(qx, sx, q, s, None, torch.float32),
                               fake_quant_linear(x, q, s, None, torch.float32), rtol=1e-5, atol=1e-5)
    # and both are FP8: far from the float product at this size
    assert (reference_gemm(qx, sx, q, s, None, torch.float32) - x @ w.t()).abs().max() > 1e-2


def test_quantization_and_liteml_config_are_exclusive(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("QAT: {}\n")
    with pytest.raises(UserError, match="--quantization fp8 and --liteml-config are exclusive"):
        QuantConfig(quantization="fp8", liteml_config=str(cfg))


def _errors_against_the_simulate_path(gemm: str, out_dtype: torch.dtype):
    """(shape, relative error) of Fp8Linear with `gemm` against the reference on the same e4m3 values, at the 70B
    shapes (K up to 28,672)."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for m, k, n in ((17, 8192, 1024), (256, 8192, 10240), (1024, 28672, 8192)):
        x = torch.randn(m, k, device=dev, generator=g, dtype=torch.float16)
        w = torch.randn(n, k, device=dev, generator=g, dtype=torch.float16) * 0.02
        linear = Fp8Linear.from_float(w, out_dtype=out_dtype)
        linear.gemm = gemm
        ref = fake_quant_linear(x, linear.qweight, linear.weight_scale, None, torch.float32)
        yield (m, k, n), ((linear(x).float() - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
def test_scaled_mm_gemm_is_within_float_rounding_of_the_simulate_path():
    """cuBLASLt's FP8 GEMM (float32 accumulation) against the reference on the same e4m3 values."""
    for shape, rel in _errors_against_the_simulate_path("scaled_mm", torch.bfloat16):
        assert rel < 8e-3, (shape, rel)  # bf16 output rounding (2^-9) dominates


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="needs an sm_90 GPU (the warp-specialised GEMM and Hopper's fast accumulation)")
@pytest.mark.parametrize("gemm", ["scaled_mm", "gemm8_ws", "scaled_mm_fast_accum", "gemm8_ws_fast"])
def test_fp8_accumulation_error_against_the_simulate_path(gemm):
    """--fp8-accumulation: the promoted paths (float32 promotion every 128 of K) stay within 0.2% of the simulate
    path (float32 sums of the same e4m3 values); the fast ones (the tensor cores' own accumulation over all of
    K) within a loose 3%. The measured figures belong in docs/engine.md; these bounds only catch a broken
    kernel."""
    for shape, rel in _errors_against_the_simulate_path(gemm, torch.float32):
        assert rel < (3e-2 if "fast" in gemm else 2e-3), (gemm, shape, rel)
