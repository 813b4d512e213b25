"""The quantizing producers (add+RMSNorm and SiLU·up writing 8-bit values and per-token scales) give exactly what
the unfused path gives: fused_triton's add_rms_norm / silu_mul followed by the per-token quantizer, for fp8 and
int8, fp16 and bf16; the e4m3 rounding is round-to-nearest-even on ties and subnormals like torch's cast.

Runs on CUDA; on a CPU machine under Triton's interpreter when TRITON_INTERPRET=1 and triton is importable,
and is skipped otherwise.
"""


import pytest
import torch

from triton_device import module_device  # noqa: E402

DEVICE = module_device()

from mlperf_llama2.engine import fused_triton  # noqa: E402
from mlperf_llama2.engine.fused_quant_triton import (  # noqa: E402
    add_rms_norm_quant, quantize_rows_fp8_torch, quantize_rows_torch, silu_mul_quant)
from mlperf_llama2.engine.ops import EagerOps  # noqa: E402
from mlperf_llama2.errors import UserError  # noqa: E402

KINDS = ["fp8", "int8"]
DTYPES = [torch.float16, torch.bfloat16]


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm_quant_equals_unfused(kind, dtype, with_delta):
    t, n, eps = 9, 200, 1e-5  # n not a power of two: masked columns must not touch the scale
    g = _gen(1)
    h = (torch.randn(t, n, generator=g, device=DEVICE) * 3).to(dtype)
    delta = (torch.randn(t, n, generator=g, device=DEVICE) * 2).to(dtype) if with_delta else None
    w = (torch.rand(n, generator=g, device=DEVICE) * 2).to(dtype)
    h[2] = 0  # with delta=None: an all-zero row gets the tiny scale and zeros
    h_out, q, scale = add_rms_norm_quant(h, delta, w, eps, kind)
    want_h, x = fused_triton.add_rms_norm(h, delta, w, eps)
    want_q, want_s = quantize_rows_torch(x, kind)
    assert torch.equal(h_out, want_h)
    assert_same_bits(q, want_q)
    assert torch.equal(scale, want_s)
    assert q.float().abs().amax() == (448 if kind == "fp8" else 127)  # the row maximum lands on the grid's end


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_quant_equals_unfused(kind, dtype):
    t, i = 5, 2500  # three column blocks of 1024, the last ragged
    gate_up = (torch.randn(t, 2 * i, generator=_gen(2), device=DEVICE) * 4).to(dtype)
    gate_up[0, 2400] = gate_up[0, i + 2400] = 30.0  # row 0's largest product in the ragged last block,
    gate_up[1, 5] = gate_up[1, i + 5] = 30.0  # row 1's in the first: each row's scale is its own blocks' maximum
    q, scale = silu_mul_quant(gate_up, kind)
    want_q, want_s = quantize_rows_torch(fused_triton.silu_mul(gate_up), kind)
    assert_same_bits(q, want_q)
    assert torch.equal(scale, want_s)
    assert scale[0] == scale[1] and q[0, 2400].float().abs() == q.float().abs().amax()  # 30 * 30 sets both


@pytest.mark.parametrize("kind", KINDS)
def test_torch_references_agree_with_the_kernels(kind):
    """The eager statement of each producer (what a CPU engine would run) against the kernel: equal where the
    producer's rounding is equal, and within one quantization step where the interpreter's exp or the fp32
    mean's summation order moves a 16-bit value by an ulp."""
    g = _gen(3)
    h = torch.randn(6, 128, generator=g, device=DEVICE).half()
    w = torch.rand(128, generator=g, device=DEVICE).half() + 0.5
    gu = torch.randn(6, 512, generator=g, device=DEVICE).half() * 3
    for got, want in ((add_rms_norm_quant(h, h, w, 1e-6, kind), EagerOps.add_rms_norm_quant(h, h, w, 1e-6, kind)),
                      (silu_mul_quant(gu, kind), EagerOps.silu_mul_quant(gu, kind))):
        q, s, want_q, want_s = got[-2], got[-1], want[-2], want[-1]
        assert torch.allclose(s, want_s, rtol=2e-3, atol=0)
        step = s[:, None] * (32 if kind == "fp8" else 1)  # an e4m3 step is at most 32 at the top binade
        assert ((q.float() * s[:, None] - want_q.float() * want_s[:, None]).abs() <= step).all()
        assert (q.float() == want_q.float()).float().mean() > 0.9


def test_e4m3_rounding_is_nearest_even():
    """Rows built so x / scale hits e4m3 ties (17 -> 16, 19 -> 20, 232 -> 224), subnormals and the clamp."""
    values = torch.tensor([448.0, 17.0, 19.0, -17.0, 232.0, 10.5, 0.0029296875, 0.0009765625, -0.00146484375,
                           300.0, 1.0, 0.0], device=DEVICE)
    h = values[None, :].repeat(2, 1).half()  # fp16 holds every value exactly
    w = torch.ones(values.numel(), device=DEVICE).half()
    gu = torch.cat([h, torch.ones_like(h)], dim=1)  # silu(x) * 1 keeps 448, 17, 19, 232: scale 1, exact ties
    q, s = silu_mul_quant(gu, "fp8")
    want_q, want_s = quantize_rows_fp8_torch(fused_triton.silu_mul(gu))
    assert_same_bits(q, want_q)
    assert torch.equal(s, want_s)
    _, q, s = add_rms_norm_quant(h, None, w, 0.0, "fp8")
    want_q, want_s = quantize_rows_fp8_torch(fused_triton.add_rms_norm(h, None, w, 0.0)[1])
    assert_same_bits(q, want_q)
    direct, direct_s = quantize_rows_fp8_torch(h.float())  # scale 1: the tie cases reach the cast unchanged
    assert direct_s[0] == 1.0 and direct[0, 1].float() == 16 and direct[0, 2].float() == 20


def test_the_fp8_quantizer_is_quant_fp8s():
    """quantize_rows_fp8_torch states quant.fp8's per-token quantizer; once that module is present they agree."""
    fp8 = pytest.importorskip("mlperf_llama2.quant.fp8")
    x = torch.randn(7, 300, generator=_gen(4), device=DEVICE).half() * 5
    x[3] = 0
    q, s = quantize_rows_fp8_torch(x)
    want_q, want_s = fp8.quantize_rows_fp8(x)
    assert_same_bits(q, want_q)
    assert torch.equal(s, want_s)


def test_empty_batch_and_bad_kind():
    gu = torch.zeros(0, 64, device=DEVICE).half()
    q, s = silu_mul_quant(gu, "int8")
    assert q.shape == (0, 32) and q.dtype == torch.int8 and s.shape == (0,)
    with pytest.raises(UserError, match="kind must be one of fp8, int8, got 'int4'"):
        silu_mul_quant(gu, "int4")
