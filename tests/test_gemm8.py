"""gemm8, the persistent 8-bit Triton GEMM with the fused rescale, computes what its torch statement says:
int8 exactly (int32 sums), fp8 to float32 rounding (every promotion variant), on the pointer and the TMA path,
with ragged M, N and K, a persistent grid smaller than the tile count, and bias; bad calls fail in one line.

On a CPU machine it runs under Triton's interpreter (TRITON_INTERPRET=1 with triton importable) and is skipped
otherwise; on CUDA the same checks run compiled, plus a 70B-width autotuned case (gpu marker).
"""


import pytest
import torch

from triton_device import module_device  # noqa: E402

DEVICE = module_device()

from mlperf_llama2.errors import UserError  # noqa: E402
from mlperf_llama2.quant.gemm8_triton import Gemm8Config, gemm8, gemm8_reference  # noqa: E402

FP8 = torch.float8_e4m3fn
SMALL = Gemm8Config(bm=16, bn=32, bk=32, group_m=2, stages=1, warps=4)
FP32_EPS = 2.0 ** -24


def operands(kind, m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "int8":
        qx = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        qw = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    else:  # e4m3 values over their whole range, both signs, some subnormals
        qx = (torch.randn(m, k, generator=g) * 60).clamp(-448, 448).to(FP8)
        qw = (torch.randn(n, k, generator=g) * 60).clamp(-448, 448).to(FP8)
    s_x = torch.rand(m, generator=g) * 1e-2 + 1e-4
    s_w = torch.rand(n, generator=g) * 1e-2 + 1e-4
    bias = torch.randn(n, generator=g)
    return [t.to(DEVICE) for t in (qx, qw, s_x, s_w, bias)]


def fp32_sum_bound(qx, qw, s_x, s_w):
    """|float32 sum of K products - exact sum| <= K * eps * sum |products|, then the rescale's two roundings."""
    k = qx.shape[1]
    mag = (qx.double().abs() @ qw.double().abs().t()) * s_x.double()[:, None] * s_w.double()[None, :]
    return (k + 3) * FP32_EPS * mag


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("m,n,k", [(37, 72, 96), (5, 40, 64)])
def test_int8_is_exact(m, n, k, tma):
    qx, qw, s_x, s_w, bias = operands("int8", m, n, k)
    got = gemm8(qx, qw, s_x, s_w, bias, torch.float32, kind="int8", config=SMALL, num_programs=3, tma=tma)
    assert torch.equal(got, gemm8_reference(qx, qw, s_x, s_w, bias, torch.float32))


@pytest.mark.parametrize("promote_every,promote_by", [(128, "adds"), (64, "adds"), (32, "adds"), (64, "mma"),
                                                      (0, "adds")])
def test_fp8_matches_float32_sum(promote_every, promote_by):
    m, n, k = 23, 72, 160  # K is not a multiple of the promotion interval: the last chunk is short
    qx, qw, s_x, s_w, bias = operands("fp8", m, n, k, seed=1)
    got = gemm8(qx, qw, s_x, s_w, None, torch.float32, kind="fp8", promote_every=promote_every,
                promote_by=promote_by, config=SMALL, num_programs=4)
    want = gemm8_reference(qx, qw, s_x, s_w, None, torch.float32)
    err = (got.double() - want.double()).abs()
    assert (err <= fp32_sum_bound(qx, qw, s_x, s_w)).all(), err.max()
    assert want.abs().max() > 1  # a non-trivial product


def test_fp8_tma_path_with_bias_and_half_output():
    m, n, k = 40, 64, 128
    qx, qw, s_x, s_w, bias = operands("fp8", m, n, k, seed=2)
    cfg = Gemm8Config(bm=32, bn=32, bk=64, group_m=2, stages=1, warps=4)
    got = gemm8(qx, qw, s_x, s_w, bias.half(), torch.float16, config=cfg, num_programs=2, tma=True)
    want = gemm8_reference(qx, qw, s_x, s_w, bias.half(), torch.float32)
    assert got.dtype == torch.float16 and got.shape == (m, n)
    # float32 sum error, then one fp16 rounding of the output
    tol = fp32_sum_bound(qx, qw, s_x, s_w) + want.double().abs() * 2.0 ** -11 + 1e-6
    assert ((got.double() - want.double()).abs() <= tol).all()


def test_every_tile_written_once_with_few_programs():
    """A persistent grid of 1 program walks all tiles in grouped order; none is skipped or written twice
    (int8 is exact, so a missed or misplaced tile shows as a wrong value)."""
    m, n, k = 70, 100, 32
    qx, qw, s_x, s_w, bias = operands("int8", m, n, k, seed=3)
    got = gemm8(qx, qw, s_x, s_w, bias, torch.float32, kind="int8", config=SMALL, num_programs=1)
    assert torch.equal(got, gemm8_reference(qx, qw, s_x, s_w, bias, torch.float32))


def test_empty_batch():
    qx, qw, s_x, s_w, _ = operands("fp8", 0, 32, 32)
    assert gemm8(qx, qw, s_x, s_w, None, torch.float16).shape == (0, 32)


@pytest.mark.parametrize("call,message", [
    (lambda o: gemm8(*o[:4], None, torch.float16, kind="int4"), "kind must be one of fp8, int8"),
    (lambda o: gemm8(*o[:4], None, torch.float16, kind="int8"), "gemm8 int8 needs 2-D torch.int8 operands"),
    (lambda o: gemm8(o[0], o[1][:, :16], *o[2:4], None, torch.float16), "disagree on K"),
    (lambda o: gemm8(*o[:4], None, torch.float16, promote_every=256), "promote_every must be 0"),
    (lambda o: gemm8(*o[:4], None, torch.float16, promote_every=48), "promote_every must be 0"),
    (lambda o: gemm8(*o[:4], None, torch.float16, promote_by="hw"), "promote_by must be one of"),
    (lambda o: gemm8(*o[:4], None, torch.float16, promote_every=32, config=Gemm8Config(bk=64)),
     "must be a multiple of the tile's BK=64"),
])
def test_bad_calls_say_what_is_wrong(call, message):
    with pytest.raises(UserError, match=message):
        call(operands("fp8", 4, 32, 32))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("m", [16, 300, 2048])
def test_autotuned_70b_width_on_gpu(kind, m):
    """The autotuned, TMA-fed kernel at a 70B o_proj width against the exact statement of the same GEMM."""
    qx, qw, s_x, s_w, bias = operands(kind, m, 1024, 8192, seed=4)
    got = gemm8(qx, qw, s_x, s_w, None, torch.float16, kind=kind)
    want = gemm8_reference(qx.cpu(), qw.cpu(), s_x.cpu(), s_w.cpu(), None, torch.float32)
    tol = fp32_sum_bound(qx.cpu(), qw.cpu(), s_x.cpu(), s_w.cpu()) + want.double().abs() * 2.0 ** -11
    assert ((got.cpu().double() - want.double()).abs() <= tol + 1e-6).all()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 200, 1024])
def test_int8_linear_gemm8_option_equals_fused_on_gpu(m):
    """Int8Linear.gemm = "gemm8" gives the fused Triton int8 GEMM's numbers bit for bit (exact int32 sums, the
    same float32 epilogue), bias included."""
    from mlperf_llama2.quant.int8_linear import Int8Linear

    g = torch.Generator(device="cuda").manual_seed(5)
    w = torch.randn(512, 1024, generator=g, device="cuda", dtype=torch.float16) * 0.02
    bias = torch.randn(512, generator=g, device="cuda", dtype=torch.float16)
    x = torch.randn(m, 1024, generator=g, device="cuda", dtype=torch.float16)
    fused, new = Int8Linear.from_float(w, bias, per_channel=True), Int8Linear.from_float(w, bias, per_channel=True)
    fused.gemm, new.gemm = "fused", "gemm8"
    assert torch.equal(new(x), fused(x))
