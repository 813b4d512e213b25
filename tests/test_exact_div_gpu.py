"""fused_triton._div_by (a reciprocal and two fma remainder corrections) equals Triton's div_rn bit for bit on the
GPU, for the divisors the quantizing kernels use: scalars and per-row values, over dividends from 2^-60 to 2^60,
divisors whose significands are all ones or just above 1 (the hard cases of reciprocal-based division), and the
quantizers' own ranges (x / scale with |x / scale| up to 2^15 and beyond the clamp). Under TRITON_INTERPRET=1
`_div_by` is div_rn itself, so only the GPU exercises the fma sequence.

fused_triton._div_elem (SiLU's per-element division, div_rn's fast path without its slow-path branch) equals div_rn
bit for bit (any NaN for a NaN) on: SiLU's operands x, 1 + exp(-x) computed in the kernel as the SiLU kernels do,
for every finite fp16 and bf16 x and random fp32 x; every dividend that lies closest to a rounding midpoint for
each odd divisor significand (|N| = 1 in tests/test_exact_div_elem.py's notation: where a reciprocal off by a
little would show), at several exponents and on the subnormal grid; zeros, infinities, NaN and huge divisors.
rcp.approx itself is checked to be within 2 steps of RN(1 / b), the model the CPU proof assumes, and not one of
that proof's HARD reciprocals."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _kernels():
    import triton
    import triton.language as tl

    from mlperf_llama2.engine.fused_triton import _div_by

    @triton.jit
    def both(a_ptr, b_ptr, fast_ptr, exact_ptr, N: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # one divisor per row, as a row scale broadcast over its columns
        b = tl.load(b_ptr + row)
        offs = tl.arange(0, BLOCK)
        for start in range(0, N, BLOCK):
            a = tl.load(a_ptr + row * N + start + offs)
            tl.store(fast_ptr + row * N + start + offs, _div_by(a, b, False))
            tl.store(exact_ptr + row * N + start + offs, tl.div_rn(a, b))

    return both


def hard_divisors(g: torch.Generator, rows: int) -> torch.Tensor:
    """Significands 1.111...1 with k trailing ones cleared, 1 + 2^-k, random; exponents from -100 to 100."""
    k = torch.randint(0, 23, (rows,), generator=g)
    kind = torch.randint(0, 3, (rows,), generator=g)
    mant = torch.where(kind == 0, 0x7FFFFF & ~((1 << k) - 1),  # all ones, the k lowest bits cleared
                       torch.where(kind == 1, 1 << k, torch.randint(0, 1 << 23, (rows,), generator=g)))
    exp = torch.randint(127 - 100, 127 + 100, (rows,), generator=g)
    bits = (exp << 23) | (mant & 0x7FFFFF)
    return bits.to(torch.int32).view(torch.float32)


def test_div_by_equals_div_rn_bit_for_bit():
    rows, n = 4096, 4096
    g = torch.Generator().manual_seed(0)
    b = hard_divisors(g, rows)
    mag = torch.randint(-60, 61, (rows, n), generator=g).float()
    a = (torch.rand(rows, n, generator=g) * 2 - 1) * torch.exp2(mag)
    a[: rows // 4] = (torch.rand(rows // 4, n, generator=g) * 2 - 1) * 40000 * b[: rows // 4, None]  # quantizer use
    a[:, 0] = 0.0
    a[:, 1] = -0.0
    a, b = a.cuda(), b.cuda()
    fast, exact = torch.empty_like(a), torch.empty_like(a)
    _kernels()[(rows,)](a, b, fast, exact, N=n, BLOCK=1024)
    want = a.double() / b.double()[:, None]
    normal = (want.abs() >= 2.0 ** -126) & (want.abs() < 2.0 ** 126)
    assert normal.float().mean() > 0.5
    differ = (fast.view(torch.int32) != exact.view(torch.int32)) & normal
    assert int(differ.sum()) == 0, (a[differ][:5], b.repeat_interleave(n).view(rows, n)[differ][:5])
    assert torch.equal(fast[~normal & torch.isfinite(exact)].abs() < 2.0 ** -125,
                       exact[~normal & torch.isfinite(exact)].abs() < 2.0 ** -125)  # tiny stays tiny


# ------------------------------------------------------------------------------------------------ _div_elem

BLOCK = 1024


@functools.lru_cache(maxsize=None)
def _elem_kernels():
    import triton
    import triton.language as tl

    from mlperf_llama2.engine.fused_triton import _div_elem, _exp, _rcp_approx

    @triton.jit
    def pairs(a_ptr, b_ptr, fast_ptr, exact_ptr, n_elems, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elems
        a = tl.load(a_ptr + offs, mask=mask, other=1.0)
        b = tl.load(b_ptr + offs, mask=mask, other=1.0)
        tl.store(fast_ptr + offs, _div_elem(a, b, False), mask=mask)
        tl.store(exact_ptr + offs, tl.div_rn(a, b), mask=mask)

    @triton.jit
    def silu(g_ptr, b_ptr, fast_ptr, exact_ptr, n_elems, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elems
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = 1.0 + _exp(-g, False)  # as the SiLU kernels compute it
        tl.store(b_ptr + offs, b, mask=mask)
        tl.store(fast_ptr + offs, _div_elem(g, b, False), mask=mask)
        tl.store(exact_ptr + offs, tl.div_rn(g, b), mask=mask)

    @triton.jit
    def rcp(b_ptr, y_ptr, n_elems, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elems
        tl.store(y_ptr + offs, _rcp_approx(tl.load(b_ptr + offs, mask=mask, other=1.0)), mask=mask)

    return pairs, silu, rcp


def _grid(n: int):
    return ((n + BLOCK - 1) // BLOCK,)


def _divide(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(_div_elem(a, b), div_rn(a, b)) on the GPU, float32 on the CPU."""
    a, b = a.float().contiguous().cuda(), b.float().contiguous().cuda()
    fast, exact = torch.empty_like(a), torch.empty_like(a)
    _elem_kernels()[0][_grid(a.numel())](a, b, fast, exact, a.numel(), BLOCK=BLOCK)
    return fast.cpu(), exact.cpu()


def _differ(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Where the bits differ, any NaN being equal to any NaN."""
    return (x.view(torch.int32) != y.view(torch.int32)) & ~(torch.isnan(x) & torch.isnan(y))


def _assert_same(a, b, fast, exact, what: str) -> None:
    bad = _differ(fast, exact)
    assert int(bad.sum()) == 0, (what, int(bad.sum()), a[bad][:4].tolist(), b[bad][:4].tolist(),
                                 fast[bad][:4].tolist(), exact[bad][:4].tolist())


def _finite_16_bit(dtype: torch.dtype) -> torch.Tensor:
    g = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype)
    return g[torch.isfinite(g)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_div_elem_equals_div_rn_on_silu_operands(dtype):
    if dtype == torch.float32:
        gen = torch.Generator().manual_seed(1)
        g = torch.randint(-(2 ** 31), 2 ** 31, (1 << 22,), generator=gen, dtype=torch.int64).to(torch.int32)
        g = g.view(torch.float32)
        tiny = torch.randint(0, 0x1B000000, (1 << 20,), generator=gen, dtype=torch.int32).view(torch.float32)
        tiny = torch.where(torch.arange(tiny.numel()) % 2 == 0, tiny, -tiny)
        g = torch.cat([g[torch.isfinite(g)], tiny,  # |x| < 2^-73, subnormals too: the scaled branch
                       torch.tensor([0.0, -0.0, 2.0 ** -23, -87.5, -88.72, -88.73, -104.0, 3.4028235e38,
                                     -3.4028235e38, float("inf"), float("-inf"), float("nan")])])
    else:
        g = _finite_16_bit(dtype)
        assert g.numel() in (63488, 65280)
    g = g.contiguous().cuda()
    b, fast, exact = (torch.empty(g.shape, dtype=torch.float32, device="cuda") for _ in range(3))
    _elem_kernels()[1][_grid(g.numel())](g, b, fast, exact, g.numel(), BLOCK=BLOCK)
    g, b, fast, exact = g.float().cpu(), b.cpu(), fast.cpu(), exact.cpu()
    _assert_same(g, b, fast, exact, f"silu {dtype}")
    if dtype != torch.float16:  # divisors >= 2^126 and inf, subnormal quotients
        assert (b >= 2.0 ** 126).any() and torch.isinf(b).any()
        assert ((exact != 0) & (exact.abs() < 2.0 ** -126)).any()


def test_div_elem_equals_div_rn_closest_to_midpoints():
    from test_exact_div_elem import midpoint_dividends

    odd_b = np.arange((1 << 23) + 1, 1 << 24, 2, dtype=np.int64)  # every odd divisor significand
    sig_a, sig_b = (torch.from_numpy(v) for v in midpoint_dividends(odd_b))
    assert sig_a.numel() > 5 * 10 ** 6
    a1, b1 = sig_a.double() / 2 ** 23, sig_b.double() / 2 ** 23
    sign = torch.where(torch.arange(a1.numel()) % 2 == 0, 1.0, -1.0).double()
    # (a exponent, b exponent): plain, large and small quotients, b >= 2^64 (scaled), |a| < 2^-60 (scaled)
    for ea, eb in ((0, 0), (40, 10), (-50, 30), (126, 0), (5, 100), (-120, 3), (-90, 20)):
        a = (a1 * sign * 2.0 ** ea).float()
        b = (b1 * 2.0 ** eb).float()
        _assert_same(a, b, *_divide(a, b), f"closest to midpoints, 2^{ea} / 2^{eb}")
    for grid_exp in (1, 2):  # subnormal quotients, b in [1, 2) and [2, 4)
        sig_a, sig_b = (torch.from_numpy(v) for v in midpoint_dividends(odd_b, grid_exp=grid_exp))
        a = (sig_a.double() * 2.0 ** -149).float()
        b = (sig_b.double() * 2.0 ** (grid_exp - 24)).float()
        assert bool(((a.double() / b.double()).abs() < 2.0 ** -126).all())
        _assert_same(a, b, *_divide(a, b), f"subnormal quotients, b in [{2 ** (grid_exp - 1)}, {2 ** grid_exp})")
        _assert_same(-a, b, *_divide(-a, b), "subnormal quotients, negative")


def test_div_elem_equals_div_rn_on_hard_divisors_and_specials():
    from test_exact_div_elem import excluded

    gen = torch.Generator().manual_seed(2)
    n = 1 << 22
    a = torch.randint(-(2 ** 31), 2 ** 31, (n,), generator=gen, dtype=torch.int64).to(torch.int32).view(torch.float32)
    a = a[torch.isfinite(a)]
    b = hard_divisors(gen, a.numel())
    b = torch.where(b < 1, b * 2.0 ** 100, b)  # hard significands, exponents 0 .. 99
    b[::16] = (torch.rand(b[::16].shape, generator=gen) + 1) * 2.0 ** 127
    b[::64] = float("inf")
    fast, exact = _divide(a, b)
    allowed = torch.from_numpy(excluded(a.numpy(), b.numpy()))
    bad = _differ(fast, exact) & ~allowed
    assert int(bad.sum()) == 0, (a[bad][:4].tolist(), b[bad][:4].tolist())
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, -1.0, 1e-45, -1e-45,
                             3.4028235e38, -3.4028235e38, 2.0 ** -60, -(2.0 ** -61), 16.0, -88.5])
    divisors = torch.tensor([1.0, 1 + 2.0 ** -23, 1.5, 2 - 2.0 ** -23, 2.0, 2.0 ** 24, 2.0 ** 64, 2.0 ** 126,
                             3.4028235e38, float("inf"), float("nan")])
    a = specials[None, :].expand(divisors.numel(), -1).reshape(-1)
    b = divisors[:, None].expand(-1, specials.numel()).reshape(-1)
    fast, exact = _divide(a, b)
    bad = _differ(fast, exact) & ~torch.from_numpy(excluded(a.numpy(), b.numpy()))
    assert int(bad.sum()) == 0, (a[bad].tolist(), b[bad].tolist(), fast[bad].tolist(), exact[bad].tolist())
    assert torch.equal(fast[(a == 0) & (b > 0)].signbit(), a[(a == 0) & (b > 0)].signbit())  # -0 stays -0


def test_rcp_approx_is_within_two_steps_and_not_a_hard_reciprocal():
    """The CPU proof's model (y0 within 2 float steps of RN(1 / b), for every significand and scaling exactly
    with b's exponent) holds on this card, and its y0 for the three HARD significands is none of HARD's."""
    from test_exact_div_elem import HARD

    sig = torch.arange(1 << 23, 1 << 24, dtype=torch.int64)
    for eb in (0, 1, 23, 63, 125):
        b = (sig.double() * 2.0 ** (eb - 23)).float()
        y = torch.empty_like(b).cuda()
        _elem_kernels()[2][_grid(b.numel())](b.cuda(), y, b.numel(), BLOCK=BLOCK)
        rn = (1 / b.double()).float()
        offset = y.cpu().view(torch.int32).long() - rn.view(torch.int32).long()
        assert int(offset.abs().max()) <= 2, eb
        if eb == 0:
            offset0 = offset
        else:
            assert torch.equal(offset, offset0), eb  # the same relative error at every exponent
    for big_b, k in HARD:
        assert int(offset0[big_b - (1 << 23)]) != k, (big_b, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_silu_mul_of_every_16_bit_gate_equals_aten(dtype):
    """The fused SiLU-gate kernel against ATen's silu times up, every finite gate. With the division test above
    passing, a difference here is expf's (libdevice's against ATen's), not the division's."""
    from mlperf_llama2.engine.ops import EagerOps, FusedOps

    g = _finite_16_bit(dtype).cuda()
    for up in (torch.ones_like(g), torch.randn(g.shape, generator=torch.Generator().manual_seed(3)).to(dtype).cuda()):
        gate_up = torch.cat([g, up])[None, :]
        got, want = FusedOps.silu_mul(gate_up), EagerOps.silu_mul(gate_up)
        bad = got.view(torch.int16) != want.view(torch.int16)
        assert int(bad.sum()) == 0, (g[bad[0]][:4].tolist(), got[bad][:4].tolist(), want[bad][:4].tolist())
