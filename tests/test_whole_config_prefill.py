"""The whole-config int8 prefill attention (w8a8_npm_v1_3_4, spec steps 6-10): torch reference and Triton kernels.

Specification: `prefill_q8_torch` on one chunk equals, bit for bit, simulate's own modules built from the YAML
(matmul_qkt, add_mask, matmul_pv with per-sample scales) on [1, H, S, D] with the additive causal mask, in
fp32, fp16 and bf16; `prefill_q8` equals `prefill_q8_torch` over 2-3 chunks, some with a cached prefix
(k_len > q_len), within the rounding the two may differ by (a P element one int8 step apart, a few output
steps; when the scales are not powers of two, also the dtype's rounding of the scores), and mostly bit for
bit (fp32: almost all); the int8 and fp32 dots agree exactly; bad input is one clear error. The kernel tests
run under TRITON_INTERPRET=1 on a CPU (or on CUDA); the reference test needs no Triton.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from mlperf_llama2.engine.kv_cache import quantize
from mlperf_llama2.engine.whole_config_prefill import prefill_q8_torch
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.destinations import QuantAddSoftmaxMask, QuantBinary
from mlperf_llama2.quant.fake_quant import Numerics, symmetric_scale
from mlperf_llama2.quant.int8_linear import quantize_rows_reference
from mlperf_llama2.quant.llama_slots import AddSlot, MatmulSlot
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
H, KV, D = 4, 2, 16
# (q_len, k_len) per chunk; k_len > q_len: a cached prefix
CASES = {
    "prefixes": [(3, 3), (9, 14), (1, 20)],
    "no_prefix": [(5, 5), (2, 2)],
    "mixed": [(7, 12), (4, 4), (9, 9)],
}

# the least share of outputs bit-equal to the reference (fp32: the scores are the same numbers)
BIT_EQUAL = {torch.float32: 0.95, torch.float16: 0.4, torch.bfloat16: 0.4}


def _triton_device() -> str:
    """Where the kernels run: CUDA, or the interpreter on the CPU; skips the test otherwise."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")
    return "cpu"


def _static_scale(quantizer, absmax: float) -> float:
    """Freeze a static quantizer at range [-absmax, absmax]; returns the fp32 scale it will use."""
    quantizer.running_min = torch.full((1,) * 4, -absmax)
    quantizer.running_max = torch.full((1,) * 4, absmax)
    return symmetric_scale(torch.tensor(absmax), quantizer.spec.bits).item()


def _repeat(x: torch.Tensor) -> torch.Tensor:
    """[S, KV, D] -> [1, H, S, D], each KV head repeated for its group (simulate's repeat_kv)."""
    return x.transpose(0, 1).repeat_interleave(H // KV, dim=0)[None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_equals_simulate_modules_for_one_chunk(dtype):
    g = torch.Generator().manual_seed(1)
    s = 11
    q = (torch.randn(s, H, D, generator=g) * 2).to(dtype)
    k = (torch.randn(s, KV, D, generator=g) * 2).to(dtype)
    v = torch.randn(s, KV, D, generator=g).to(dtype)
    rules, numerics = load_rules(NPM), Numerics(batch_shared_scale=False)
    qkt = QuantBinary(MatmulSlot(), rules.match("Matmul", "model.layers.0.self_attn.matmul_qkt"), numerics, "qkt")
    add_mask = QuantAddSoftmaxMask(AddSlot(), rules.match("Add", "model.layers.0.self_attn.add_mask"), numerics,
                                   "add_mask")
    pv = QuantBinary(MatmulSlot(), rules.match("Matmul", "model.layers.0.self_attn.matmul_pv"), numerics, "pv")
    assert qkt.quantizer_in1.spec.dynamic and not add_mask.quantizer_in1.spec.dynamic
    s_k = _static_scale(qkt.quantizer_in2, k.float().abs().max().item())
    s_v = _static_scale(pv.quantizer_in2, v.float().abs().max().item())
    sm_scale = D**-0.5
    raw = (q.float().transpose(0, 1) @ k.float().transpose(0, 1).repeat_interleave(2, 0).transpose(1, 2)) * sm_scale
    s_mask = _static_scale(add_mask.quantizer_in1, 0.8 * raw.abs().max().item())  # the largest scores clamp
    s_out = _static_scale(pv.quantizer_out, 0.5)

    mask = torch.full((s, s), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]  # additive, [1, 1, S, S]
    scores = qkt(q.transpose(0, 1)[None], _repeat(k).transpose(2, 3)) * sm_scale  # [1, H, S, S]
    probs = torch.softmax(add_mask(scores, mask), dim=-1, dtype=torch.float32).to(dtype)
    simulate = pv(probs, _repeat(v))[0].transpose(0, 1)  # [S, H, D]

    q8, qs = quantize_rows_reference(q.reshape(s, H * D))  # step 6: per token across all heads
    kv_scales = torch.tensor([[s_k] * KV, [s_v] * KV])  # [2, KV]
    k8, v8 = quantize(k, kv_scales[0], torch.int8), quantize(v, kv_scales[1], torch.int8)
    cu = torch.tensor([0, s], dtype=torch.int32)
    ours = prefill_q8_torch(q8.view(s, H, D), qs, k8, v8, cu, cu, s, s, sm_scale, kv_scales, s_mask, s_out, dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, simulate)
    assert ours.abs().max().item() == pytest.approx(0.5, rel=1e-3)  # the output quantizer clamps: it is applied


def _case(chunks, dtype, pow2: bool, seed: int = 0, device: str = "cpu", shape: tuple[int, int, int] = (H, KV, D)):
    """Kernel arguments for `chunks` [(q_len, k_len)]: random int8 Q, K, V; with pow2, power-of-two qs and K, V
    scales (the scores are then exact in any dtype, so only the softmax's summation order differs).
    shape: (H, KV, D)."""
    h, kv, d = shape
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(c[0] for c in chunks), sum(c[1] for c in chunks)
    q8 = torch.randint(-127, 128, (tq, h, d), generator=g, dtype=torch.int8)
    k8 = torch.randint(-127, 128, (tk, kv, d), generator=g, dtype=torch.int8)
    v8 = torch.randint(-127, 128, (tk, kv, d), generator=g, dtype=torch.int8)
    if pow2:
        qs = 2.0 ** -torch.randint(7, 10, (tq,), generator=g).float()
        kv_scales = torch.tensor([[2.0**-6] * kv, [2.0**-7] * kv])
    else:
        qs = torch.rand(tq, generator=g) * 4e-3 + 2e-3
        kv_scales = torch.rand(2, 1, generator=g).expand(2, kv) * 0.01 + 0.01
    cu_q = torch.tensor([0] + [sum(c[0] for c in chunks[:i + 1]) for i in range(len(chunks))], dtype=torch.int32)
    cu_k = torch.tensor([0] + [sum(c[1] for c in chunks[:i + 1]) for i in range(len(chunks))], dtype=torch.int32)
    s_mask, s_out = 6e-4, 5e-5  # scores within about +-20, outputs within +-1.6: some clamp
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in (
        q8, qs, k8, v8, cu_q, cu_k, max(c[0] for c in chunks), max(c[1] for c in chunks), d**-0.5,
        kv_scales.contiguous(), s_mask, s_out, dtype)]


def _ulp(x: float, dtype: torch.dtype) -> float:
    """The dtype's spacing at magnitude x."""
    return torch.finfo(dtype).eps * 2.0 ** (math.frexp(x)[1] - 1) if x > 0 else 0.0


def _bound(args, ref: torch.Tensor, pow2: bool) -> float:
    """How far kernel and reference may be apart: a few output rounding steps (16-bit s_out and the dtype),
    two P steps (ps) on the largest value, the dtype's rounding of the dequantized P, and, when the scores
    themselves are rounded differently (not pow2), the softmax's response to a few dtype steps of the
    largest score: exp(2 delta) - 1 of |V|."""
    q8, qs, _, _, _, _, _, _, sm_scale, kv_scales, s_mask, s_out, dtype = args
    v_max = 127 * kv_scales[1].max().item()
    bound = 2 * (s_out or 0.0) + 2 * _ulp(ref.abs().max().item(), dtype) + 2 * v_max / 127
    bound += torch.finfo(dtype).eps * v_max  # simulate rounds P's dequantized values to the dtype (bf16: 2**-8)
    if not pow2:
        s_max = 127 * 127 * q8.shape[2] * qs.max().item() * kv_scales[0].max().item() * sm_scale
        delta = 4 * _ulp(s_max, dtype) + (s_mask or 0.0)
        bound += math.expm1(2 * delta) * v_max
    return bound


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype,pow2", [(torch.float32, True), (torch.float32, False), (torch.float16, True),
                                        (torch.float16, False), (torch.bfloat16, True)])
def test_kernel_equals_reference(case, dtype, pow2):
    device = _triton_device()
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case(CASES[case], dtype, pow2, device=device)
    ref = prefill_q8_torch(*args)
    out = prefill_q8(*args, block_m=8, block_n=16)  # several query blocks and key blocks per chunk
    assert out.dtype == dtype and out.shape == ref.shape
    err = (out.float() - ref.float()).abs()
    bound = _bound(args, ref, pow2)
    assert err.max().item() <= bound, f"max error {err.max().item()} > {bound}"
    assert bound < 0.1 * ref.abs().max().item()  # the bound says something
    assert (err == 0).float().mean().item() >= BIT_EQUAL[dtype]


def test_kernel_without_quantizers_and_default_blocks():
    device = _triton_device()
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case(CASES["prefixes"], torch.float32, pow2=True, seed=3, device=device)
    args[10] = args[11] = None  # no mask-add quantizer, no output quantizer
    ref = prefill_q8_torch(*args)
    out = prefill_q8(*args)
    assert (out - ref).abs().max().item() <= _bound(args, ref, pow2=True)
    args_q = list(args)
    args_q[10], args_q[11] = 6e-4, 5e-5
    assert not torch.equal(prefill_q8_torch(*args_q), ref)  # the quantizers do change the result


@pytest.mark.parametrize("shape", [(6, 2, 24), (3, 3, 8)])
def test_kernel_pads_groups_and_head_dims(shape):
    """A GQA group of 3 (padded to 4 rows per token), no GQA, head dims that are no power of 2 or under 32 (padded
    to the 32 an int8 tl.dot needs on a GPU)."""
    device = _triton_device()
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case(CASES["mixed"], torch.float32, pow2=True, seed=7, device=device, shape=shape)
    ref = prefill_q8_torch(*args)
    err = (prefill_q8(*args, block_m=4, block_n=16).float() - ref.float()).abs()
    assert err.max().item() <= _bound(args, ref, pow2=True)
    assert (err == 0).float().mean().item() >= BIT_EQUAL[torch.float32]


def test_int8_and_fp32_dots_agree_exactly():
    device = _triton_device()
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case(CASES["mixed"], torch.float16, pow2=False, seed=5, device=device)
    assert torch.equal(prefill_q8(*args, block_m=8, block_n=16), prefill_q8(*args, block_m=8, block_n=16,
                                                                           int_dot=False))


def test_bad_input_is_one_clear_error():
    device = _triton_device()
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case(CASES["no_prefix"], torch.float32, pow2=True, device=device)
    args[0] = args[0].float()
    with pytest.raises(UserError, match="q8 must be int8"):
        prefill_q8(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_at_70b_head_shapes_on_gpu(dtype):
    """H 64, KV 8, D 128 (a tensor-parallel rank keeps the group of 8), long chunks, one with a long prefix."""
    from mlperf_llama2.engine.whole_config_prefill_triton import prefill_q8

    args = _case([(300, 300), (37, 900), (1, 129)], dtype, pow2=True, device="cuda", shape=(64, 8, 128))
    args[8], args[10], args[11] = 2.0**-3, 2e-3, 2e-4  # sm_scale a power of 2, like the other scales
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction
    try:  # the reference's scores summed in fp32 (exact here), so both sides hold the same scores
        matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = False
        ref = prefill_q8_torch(*args)
    finally:
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = saved
    err = (prefill_q8(*args).float() - ref.float()).abs()
    assert err.max().item() <= _bound(args, ref, pow2=True)
    assert (err == 0).float().mean().item() >= BIT_EQUAL[dtype]
