"""fused_triton._div_by (a reciprocal and two fma remainder corrections) equals Triton's div_rn bit for bit on the
GPU, for the divisors the quantizing kernels use: scalars and per-row values, over dividends from 2^-60 to 2^60,
divisors whose significands are all ones or just above 1 (the hard cases of reciprocal-based division), and the
quantizers' own ranges (x / scale with |x / scale| up to 2^15 and beyond the clamp). Under TRITON_INTERPRET=1
`_div_by` is div_rn itself, so only the GPU exercises the fma sequence."""

from __future__ import annotations

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
