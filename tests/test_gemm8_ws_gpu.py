"""gemm8_ws on an sm_90 GPU gives gemm8_triton's numbers bit for bit: int8 exactly (= gemm8_reference), promoted
fp8 chunk for chunk (the same 128-element MMA partial sums joined by the same float32 adds in K order), for
every candidate tile, ragged M / N / K, a persistent grid smaller than the tile count (the shared-memory ring
wraps across tiles, so barrier phases are exercised), bias and 16-bit outputs. Unpromoted fp8 (Hopper's
reduced-precision accumulation) is held to a measured bound instead of equality."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
    pytest.skip("needs an sm_90 GPU (H100 / H200)", allow_module_level=True)

from mlperf_llama2.quant import gemm8_ws as ws  # noqa: E402
from mlperf_llama2.quant.gemm8_triton import Gemm8Config, gemm8, gemm8_reference  # noqa: E402

FP8 = torch.float8_e4m3fn
TRITON_TILE = Gemm8Config(bm=64, bn=64, bk=128, group_m=4, stages=3, warps=4)  # fixed, no autotune
SHAPES = [(1, 256, 256), (77, 136, 208), (300, 1024, 1152), (640, 384, 8192), (5, 264, 96)]  # K 96: one chunk


def fp32_out(cfg):
    """The same tile with as many stages as fit beside a float32 output tile (stages change the schedule, not
    the numbers), so the comparisons see every float32 bit."""
    stages = cfg.stages
    while cfg.smem_bytes(4) > 227 * 1024 and stages > 2:
        stages -= 1
        cfg = dataclasses.replace(cfg, stages=stages)
    return cfg


def operands(kind, m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "int8":
        qx = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        qw = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    else:
        qx = (torch.randn(m, k, generator=g) * 60).clamp(-448, 448).to(FP8)
        qw = (torch.randn(n, k, generator=g) * 60).clamp(-448, 448).to(FP8)
    s_x = torch.rand(m, generator=g) * 1e-2 + 1e-4
    s_w = torch.rand(n, generator=g) * 1e-2 + 1e-4
    bias = torch.randn(n, generator=g)
    return [t.cuda() for t in (qx, qw, s_x, s_w, bias)]


def _tile_id(c):
    return c.tag

@pytest.mark.parametrize("cfg", ws.CONFIGS["fast"], ids=_tile_id)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_is_exact(cfg, m, n, k):
    qx, qw, s_x, s_w, bias = operands("int8", m, n, k)
    for programs in (None, 3):
        got = ws.gemm8_ws(qx, qw, s_x, s_w, bias, torch.float32, kind="int8", config=fp32_out(cfg),
                          num_programs=programs)
        assert torch.equal(got, gemm8_reference(qx, qw, s_x, s_w, bias, torch.float32))


@pytest.mark.parametrize("cfg", ws.CONFIGS["fp8_promote"], ids=_tile_id)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_promoted_fp8_equals_the_triton_kernel(cfg, m, n, k):
    qx, qw, s_x, s_w, _ = operands("fp8", m, n, k, seed=1)
    want = gemm8(qx, qw, s_x, s_w, None, torch.float32, kind="fp8", config=TRITON_TILE)
    for programs in (None, 3):
        got = ws.gemm8_ws(qx, qw, s_x, s_w, None, torch.float32, kind="fp8", config=fp32_out(cfg),
                          num_programs=programs)
        assert torch.equal(got, want)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_bias_and_16_bit_output(out_dtype):
    qx, qw, s_x, s_w, bias = operands("fp8", 200, 512, 1024, seed=2)
    want = gemm8(qx, qw, s_x, s_w, bias, out_dtype, kind="fp8", config=TRITON_TILE)
    assert torch.equal(ws.gemm8_ws(qx, qw, s_x, s_w, bias, out_dtype, kind="fp8"), want)
    qx, qw, s_x, s_w, bias = operands("int8", 200, 512, 1024, seed=3)
    assert torch.equal(ws.gemm8_ws(qx, qw, s_x, s_w, bias, out_dtype, kind="int8"),
                       gemm8_reference(qx, qw, s_x, s_w, bias, out_dtype))


@pytest.mark.parametrize("cfg", ws.CONFIGS["fast"], ids=_tile_id)
def test_unpromoted_fp8_within_the_fast_accumulation_bound(cfg):
    """Hopper's fast fp8 accumulation keeps ~14 bits in its running sum, so each of the K / 32 MMA steps may
    lose ~2^-13 of it: per element within (K / 32) 2^-12 of the sum of |products| (loose: it catches a wrong
    tile, not a worse rounding), and in norm within twice the Triton kernel's own fast-accumulation error
    (gemm8_fp8_fast measured ~2e-3 of the norm at K 8192, tools/bench_gemm.py)."""
    m, n, k = 300, 1024, 8192
    qx, qw, s_x, s_w, _ = operands("fp8", m, n, k, seed=4)
    got = ws.gemm8_ws(qx, qw, s_x, s_w, None, torch.float32, kind="fp8", promote_every=0, config=fp32_out(cfg))
    exact = gemm8_reference(qx, qw, s_x, s_w, None, torch.float32).double()
    mag = (qx.double().abs() @ qw.double().abs().t()) * s_x.double()[:, None] * s_w.double()[None, :]
    assert ((got.double() - exact).abs() <= (k // 32) * 2.0 ** -12 * mag + 1e-30).all()
    fast = gemm8(qx, qw, s_x, s_w, None, torch.float32, kind="fp8", promote_every=0, config=TRITON_TILE)
    assert (got.double() - exact).norm() <= 2 * (fast.double() - exact).norm() + 1e-30
