"""The whole-config int8 decode attention (spec steps 6-10): the torch reference is simulate, the kernels match it.

Specification: `decode_q8_torch` for one sequence equals, bit for bit, simulate's matmul_qkt / add_mask /
matmul_pv modules built from w8a8_npm_v1_3_4.yaml (per-sequence scales) fed the float query and context the
int8 inputs came from. `decode_q8` (two Triton passes) equals `decode_q8_torch` to fp32 rounding in fp32, and in
fp16 within a few 16-bit steps of the output quantizer plus one int8 step of P per key (a P element may round to
a neighbouring integer, since the kernel's scores differ from simulate's by a 16-bit rounding). Contexts of 1, 5
and 13 tokens through a shuffled block table, GQA groups of 2. Kernels run under TRITON_INTERPRET=1 on a CPU or on
CUDA, at shapes a GPU compiles (head_dim and key tiles of 32: an int8 tl.dot's least K on sm_90).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlperf_llama2.engine.kv_cache import dequantize, quantize
from mlperf_llama2.engine.whole_config_decode import decode_q8_torch
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.destinations import QuantAddSoftmaxMask, QuantBinary
from mlperf_llama2.quant.fake_quant import Numerics, symmetric_scale
from mlperf_llama2.quant.llama_slots import AddSlot, MatmulSlot
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
H, KV, D, BLOCK = 4, 2, 32, 4  # head_dim 32: an int8 tl.dot's least K on a GPU
CONTEXTS = (1, 5, 13)


from triton_device import needs_triton, triton_device  # noqa: E402

DEVICE = triton_device()


def scale_of(absmax: float, bits: int) -> float:
    """The static scale a calibrated range of +-absmax gives (fp32, as symmetric_scale)."""
    return symmetric_scale(torch.tensor(absmax), bits).item()


def make_case(dt: torch.dtype, seed: int = 0, contexts=CONTEXTS, heads: int = H, kv_heads: int = KV, d: int = D,
              block: int = BLOCK, per_head_kv: bool = True):
    """Float inputs and the engine's int8 form of them.

    Returns (q [B, H, D] dt, k, v [S, KV, D] dt, args: the decode_q8 arguments before s_mask, tables [B, W])."""
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-n // block) for n in contexts]
    perm = torch.randperm(sum(blocks) + 2, generator=g).tolist()  # scattered blocks, two unused
    tables, start = [], 0
    for n in blocks:
        tables.append(perm[start:start + n])
        start += n
    width = max(blocks)
    bt = torch.tensor([t + [perm[-1]] * (width - len(t)) for t in tables], dtype=torch.int32)
    slots = (sum(blocks) + 2) * block
    spread = 2 * (16 / d) ** 0.25  # scores q.k / sqrt(d) spread as at head_dim 16 (std ~4), whatever d
    q = (torch.randn(len(contexts), heads, d, generator=g) * spread).to(dt)
    k = (torch.randn(slots, kv_heads, d, generator=g) * spread).to(dt)
    v = (torch.randn(slots, kv_heads, d, generator=g) * 2).to(dt)
    qs = symmetric_scale(q.float().abs().amax(dim=(1, 2)), 8)  # [B]: one scale per token across all heads
    q8 = torch.round(q.float() / qs[:, None, None]).clamp(-127, 127).to(torch.int8)
    kv_amax = torch.stack([k.float().abs().amax(dim=(0, 2)), v.float().abs().amax(dim=(0, 2))]) * 0.95  # some clamp
    if not per_head_kv:
        kv_amax = kv_amax.amax(dim=1, keepdim=True).expand(2, kv_heads)
    kv_scales = symmetric_scale(kv_amax.contiguous(), 8)  # [2, KV]
    k8, v8 = quantize(k, kv_scales[0], torch.int8), quantize(v, kv_scales[1], torch.int8)
    lens = torch.tensor(contexts, dtype=torch.int32)
    return q, k, v, (q8, qs, k8, v8, bt, lens, d ** -0.5, block, kv_scales), tables


def on_device(args):
    return tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)


def run_kernel(args, s_mask, s_out, dt, block_n: int = 32, config=None) -> torch.Tensor:
    from mlperf_llama2.engine.whole_config_decode_triton import decode_q8

    return decode_q8(*on_device(args), s_mask, s_out, dt, block_n=block_n, config=config).cpu()


S_MASK = scale_of(12.0, 16)  # the scores here reach about +-15: the largest are clamped
S_OUT = scale_of(3.0, 16)  # outputs reach about +-5: some are clamped


@needs_triton
@pytest.mark.parametrize("quantizers", ["both", "none"])
@pytest.mark.parametrize("contexts,block_n,heads", [  # 6 heads: groups of 3, padded lanes
    (CONTEXTS, 32, H), ((1, 5, 13, 40, 70), 32, H), (CONTEXTS, 64, H), (CONTEXTS, 32, 6)])
def test_kernel_equals_the_reference_fp32(quantizers, contexts, block_n, heads):
    s_mask, s_out = (S_MASK, S_OUT) if quantizers == "both" else (None, None)
    for seed in range(2):
        *_, args, _ = make_case(torch.float32, seed, contexts, heads=heads)
        want = decode_q8_torch(*args, s_mask, s_out, torch.float32)
        got = run_kernel(args, s_mask, s_out, torch.float32, block_n)
        assert got.shape == (len(contexts), heads, D) and got.dtype == torch.float32
        # fp rounding of the scores / output may move a value across one of the output quantizer's rounding
        # boundaries (one 16-bit step), rarely; without it only fp32 rounding separates them
        err = (got - want).abs()
        assert (err <= 1e-5 + 1e-5 * want.abs() + (1.001 * s_out if s_out else 0.0)).all(), err.max()
        assert (err > 1e-5 + 1e-5 * want.abs()).float().mean() <= 0.02
        if s_out is not None:  # the 16-bit output quantizer ran: every value is a multiple of s_out within +-3*2^15
            steps = got / S_OUT
            assert (steps - steps.round()).abs().max() < 1e-2 and steps.abs().max() <= 32767


def assert_within_one_p_step(got: torch.Tensor, want: torch.Tensor, args, dt: torch.dtype) -> None:
    """|got - want| <= 3 s_out + 4 ulp(want) + ps * sum_j |vd_j| (each p8_j one integer off, at most), and the
    mean error is a few ulps: a P element may round to its neighbour, most do not."""
    q8, qs, k8, v8, bt, lens, sm_scale, block, kv_scales = args
    group = q8.shape[1] // k8.shape[1]
    eps = torch.finfo(dt).eps
    for b, n in enumerate(lens.tolist()):
        slots = [int(bt[b, p // block]) * block + p % block for p in range(n)]
        qd = (q8[b].float() * qs[b]).to(dt)  # [H, D]: the reference's P scale, recomputed
        kd = dequantize(k8[slots], kv_scales[0], dt).repeat_interleave(group, 1)  # [n, H, D]
        p = torch.softmax(torch.einsum("hd,nhd->hn", qd.float(), kd.float()) * sm_scale, -1).to(dt).float()
        ps = symmetric_scale(p.amax(), 8).item()
        vd = dequantize(v8[slots], kv_scales[1], dt).float().abs().sum(0).repeat_interleave(group, 0)  # [H, D]
        bound = 3 * S_OUT + 4 * eps * want[b].abs() + ps * vd
        err = (got[b] - want[b]).abs()
        assert (err <= bound).all(), f"seq {b}: error {err.max():.4g} over the bound"
    assert (got - want).abs().mean() < 4 * eps * want.abs().mean()


@needs_triton
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_kernel_in_16_bits_is_within_one_int8_step_of_p(dt):
    for seed in range(3):
        *_, args, _ = make_case(dt, seed)
        want = decode_q8_torch(*args, S_MASK, S_OUT, dt).float()
        got = run_kernel(args, S_MASK, S_OUT, dt).float()
        assert torch.isfinite(got).all()
        assert_within_one_p_step(got, want, args, dt)


def simulate_modules(k_absmax: float, v_absmax: float, s_mask_absmax: float, s_out_absmax: float):
    """matmul_qkt, add_mask, matmul_pv of layer 0 as open-backend simulate builds them, static ranges set."""
    rules = load_rules(NPM)
    numerics = Numerics(batch_shared_scale=False)  # --quant-per-sample-scale
    attn = "model.layers.0.self_attn."
    qkt = QuantBinary(MatmulSlot(), rules.match("Matmul", attn + "matmul_qkt"), numerics, attn + "matmul_qkt")
    mask = QuantAddSoftmaxMask(AddSlot(), rules.match("Add", attn + "add_mask"), numerics, attn + "add_mask")
    pv = QuantBinary(MatmulSlot(), rules.match("Matmul", attn + "matmul_pv"), numerics, attn + "matmul_pv")
    assert qkt.quantizer_in1.spec.dynamic and not qkt.quantizer_in2.spec.dynamic and pv.quantizer_out is not None

    def set_range(quantizer, absmax):
        quantizer.running_min = torch.full((1, 1, 1, 1), -absmax)
        quantizer.running_max = torch.full((1, 1, 1, 1), absmax)

    set_range(qkt.quantizer_in2, k_absmax)
    set_range(pv.quantizer_in2, v_absmax)
    set_range(mask.quantizer_in1, s_mask_absmax)
    set_range(pv.quantizer_out, s_out_absmax)
    return qkt, mask, pv


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[1, KV, n, D] -> [1, KV * groups, n, D], as llama_slots._repeat_kv."""
    _, kv, n, d = x.shape
    return x[:, :, None].expand(1, kv, groups, n, d).reshape(1, kv * groups, n, d)


@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_equals_the_simulate_modules(dt):
    q, k, v, args, tables = make_case(dt, seed=3, per_head_kv=False)
    kv_scales = args[-1]
    absmax = [(x.float().abs().amax() * 0.95).item() for x in (k, v)]  # make_case's per-tensor K / V ranges
    qkt, mask, pv = simulate_modules(*absmax, 12.0, 3.0)
    for which in range(2):  # the modules' static K / V scales are the cache's
        assert (kv_scales[which] == scale_of(absmax[which], 8)).all()
    got = decode_q8_torch(*args, scale_of(12.0, 16), scale_of(3.0, 16), dt)  # [B, H, D]
    for b, n in enumerate(CONTEXTS):
        slots = [tables[b][p // BLOCK] * BLOCK + p % BLOCK for p in range(n)]
        qb = q[b][None, :, None]  # [1, H, 1, D]
        kb = repeat_kv(k[slots].transpose(0, 1)[None], H // KV)  # [1, H, n, D]
        vb = repeat_kv(v[slots].transpose(0, 1)[None], H // KV)
        with torch.no_grad():
            s = qkt(qb, kb.transpose(2, 3)) * D ** -0.5  # [1, H, 1, n]
            s = mask(s, torch.zeros(1, 1, 1, n, dtype=dt))
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(dt)
            want = pv(p, vb)[0, :, 0]  # [H, D]
        assert got.dtype == want.dtype == dt
        assert torch.equal(got[b], want), f"seq {b}: max diff {(got[b].float() - want.float()).abs().max()}"


def test_reference_quantizers_are_optional_and_change_the_output():
    *_, args, _ = make_case(torch.float32, seed=4)
    plain = decode_q8_torch(*args, None, None, torch.float32)
    coarse = decode_q8_torch(*args, scale_of(12.0, 16) * 64, scale_of(3.0, 16) * 64, torch.float32)
    assert not torch.equal(plain, coarse)
    steps = coarse / (scale_of(3.0, 16) * 64)
    assert (steps - steps.round()).abs().max() < 1e-3  # the output quantizer's grid


@pytest.mark.parametrize("change,message", [
    (lambda a: (a[0].float(),) + a[1:], "q8 must be a 3-d int8 tensor, got torch.float32"),
    (lambda a: a[:1] + (a[1].double(),) + a[2:], r"qs must be float32 \[3\], got torch.float64 \[3\]"),
    (lambda a: a[:8] + (a[8][:, :1].contiguous(),), r"kv_scales must be float32 \[2, 2\], got torch.float32 \[2, 1\]"),
    (lambda a: a[:2] + (a[2][:, :, :8].contiguous(),) + a[3:], r"caches \[.*\] do not fit q8"),
])
def test_bad_inputs_are_one_clear_line(change, message):
    *_, args, _ = make_case(torch.float32)
    with pytest.raises(UserError, match="whole-config decode: " + message):
        decode_q8_torch(*change(args), None, None, torch.float32)
    with pytest.raises(UserError, match="out_dtype must be float16, bfloat16 or float32, got torch.int8"):
        decode_q8_torch(*args, None, None, torch.int8)


def wc_configs():
    try:
        from mlperf_llama2.engine.whole_config_decode_triton import WC_DECODE_CONFIGS
    except ImportError:  # no triton: the tests using it skip
        return ["base"]
    return list(WC_DECODE_CONFIGS)


@needs_triton
@pytest.mark.parametrize("dt", [torch.float32, torch.float16])
def test_every_launch_variant_gives_the_base_kernels_values(dt):
    """Tiles of 32 and more over blocks of 4 (the vectorised table read), the scores buffer instead of the
    recomputation: the same numbers, bit for bit, as the base variant at its own tile size."""
    from mlperf_llama2.engine.whole_config_decode_triton import WC_DECODE_CONFIGS

    *_, args, _ = make_case(dt, seed=6, contexts=(1, 5, 13, 40))
    want = run_kernel(args, S_MASK, S_OUT, dt, block_n=32, config="base")
    for name, cfg in WC_DECODE_CONFIGS.items():
        for block_n in (32, None):  # None: the variant's own tile
            got = run_kernel(args, S_MASK, S_OUT, dt, block_n=block_n, config=name)
            if block_n is None and cfg.block_n != 32:  # another tile sums l in another order: fp32 rounding
                assert_within_one_p_step(got.float(), want.float(), args, dt) if dt != torch.float32 else \
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 + 1.001 * S_OUT)
            else:
                assert torch.equal(got, want), f"{name} block_n={block_n}: {(got - want).abs().max()}"


@needs_triton
def test_an_unknown_launch_variant_is_one_line():
    *_, args, _ = make_case(torch.float32)
    with pytest.raises(UserError, match="unknown whole-config decode config 'fast'; choose from base, "):
        run_kernel(args, None, None, torch.float32, config="fast")


@needs_triton
@pytest.mark.parametrize("block_n", [8, 16])
def test_kernel_refuses_a_block_n_tl_dot_cannot_take(block_n):
    """P.V reduces over a tile's keys: an int8 dot on sm_90 needs 32 (the interpreter would take 16)."""
    *_, args, _ = make_case(torch.float32)
    with pytest.raises(UserError, match=f"whole-config decode: block_n must be >= 32 \\(tl.dot\\), got {block_n}"):
        run_kernel(args, None, None, torch.float32, block_n=block_n)


@needs_triton
@pytest.mark.parametrize("d", [16, 48])
def test_kernel_refuses_a_head_dim_tl_dot_cannot_take(d):
    """Q.K^T reduces over head_dim, a power of 2 >= 32 on a GPU; one line on every device, before any launch."""
    *_, args, _ = make_case(torch.float32, d=d)
    with pytest.raises(UserError, match=f"whole-config decode: head_dim must be a power of 2 >= 32 .*got {d}$"):
        run_kernel(args, None, None, torch.float32)


@pytest.mark.gpu
def test_kernel_at_70b_head_shapes_on_the_gpu():
    """64 heads over 8 KV heads, head_dim 128, block size 16, contexts up to 1100 tokens, fp16."""
    contexts = (1, 17, 300, 1100)
    for dt in (torch.float16, torch.bfloat16):
        *_, args, _ = make_case(dt, seed=5, contexts=contexts, heads=64, kv_heads=8, d=128, block=16)
        s_mask, s_out = scale_of(40.0, 16), S_OUT
        want = decode_q8_torch(*args, s_mask, s_out, dt).float()
        for config in wc_configs():  # every launch variant compiles and computes the same numbers on the GPU
            got = run_kernel(args, s_mask, s_out, dt, block_n=None, config=config).float()
            assert torch.isfinite(got).all(), config
            assert_within_one_p_step(got, want, args, dt)
