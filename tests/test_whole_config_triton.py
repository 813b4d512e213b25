"""The whole-config int8 mode's elementwise kernels equal their torch references, and the references equal
the simulate path's destination modules built from w8a8_npm_v1_3_4.yaml.

Kernels run on CUDA, or on CPU under Triton's interpreter when TRITON_INTERPRET=1 and triton is importable
(skipped otherwise); the reference-vs-simulate tests need no Triton. Exact everywhere except the RMSNorm
mean, whose fp32 summation order differs between tl.sum and torch: random rows agree to one rounding
there, and bit for bit on rows whose sum of squares is exact in any order. bfloat16 runs only on the GPU:
the interpreter rounds fp32 -> bf16 toward zero.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mlperf_llama2.engine import kv_cache
from mlperf_llama2.engine import whole_config_ref as ref
from mlperf_llama2.engine.ops import rotate_half
from mlperf_llama2.quant.destinations import (LinearQuant, QuantAddCommonScalePerToken, QuantBinary, QuantRMSNorm,
                                              SingleInputQuantActivation)
from mlperf_llama2.quant.fake_quant import Numerics, symmetric_scale
from mlperf_llama2.quant.int8_linear import quantize_rows_reference
from mlperf_llama2.quant.llama_slots import AddSlot, MulSlot
from mlperf_llama2.quant.yaml_config import load_rules

NPM = str(Path(__file__).resolve().parents[1] / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
T, N, H, KV, D, P, SLOTS = 5, 64, 4, 2, 16, 50, 20
EPS = 1e-5
QMAX16 = 32767


@pytest.fixture(scope="module")
def wc():
    """The kernel module, or a skip where no kernel can run."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels need a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")
    pytest.importorskip("triton")
    from mlperf_llama2.engine import whole_config_triton

    return whole_config_triton


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed)) * scale).to(dtype).to(DEVICE)


def _static_scale(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A per-tensor 16-bit scale covering `fraction` of x's range: fraction < 1 makes the largest values clamp."""
    return symmetric_scale(x.float().abs().amax() * fraction, 16).to(DEVICE)


def _clamps(x: torch.Tensor, scale: torch.Tensor) -> int:
    return int((x.float() / scale).abs().gt(QMAX16).sum())


def _assert_one_rounding(got: tuple, want: tuple, dtype: torch.dtype) -> None:
    """(x8, xs) of an RMSNorm: the fp32 mean's summation order may move an output by one ulp of the model
    dtype, so a few int8 values by one step and a scale (absmax / 127) by about one such ulp."""
    (x8, xs), (x8_want, xs_want) = got, want
    step = (x8.int() - x8_want.int()).abs()
    assert step.max() <= 1 and step.float().mean() < 0.02
    assert torch.allclose(xs, xs_want, rtol=2 * torch.finfo(dtype).eps, atol=0)


# ------------------------------------------------------------------------------------------- add + RMSNorm


def _residual(dtype):
    h = _randn(T, N, seed=1, scale=3.0, dtype=dtype)
    delta = _randn(T, N, seed=2, scale=40.0, dtype=dtype)
    h[-1], delta[-1] = 0.0, 0.0  # an all-zero row: the scale is FLT_TINY, never 0
    delta[1] *= 1e-3  # a row whose scale comes from h alone
    weight = (torch.rand(N, generator=_gen(3)) + 0.5).to(dtype).to(DEVICE)
    return h, delta, weight


VARIANTS = {"both": (16, 16), "no_add_q": (None, 16), "no_norm_q": (16, None), "neither": (None, None),
            "8_bit": (8, 8), "8_bit_norm": (None, 8)}  # 8 bits: quantizers whose effect reaches the int8 output


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm_q8_matches_reference(wc, dtype, variant, with_delta):
    h, delta, weight = _residual(dtype)
    delta = delta if with_delta else None
    add_bits, norm_bits = VARIANTS[variant]
    h_new, *x = wc.add_rms_norm_q8(h, delta, weight, EPS, add_bits, norm_bits)
    h_want, *x_want = ref.add_rms_norm_q8_torch(h, delta, weight, EPS, add_bits, norm_bits)
    assert torch.equal(h_new, h_want)
    if delta is None:
        assert h_new is h  # no add: the residual is passed on, not copied
    _assert_one_rounding(x, x_want, dtype)
    assert x[0].dtype == torch.int8 and x[1].shape == (T,) and x[1][-1] == torch.finfo(torch.float32).tiny


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_add_rms_norm_quantizer_changes_the_result(wc, dtype):
    """The variants are different computations: dropping a quantizer changes the output."""
    h, delta, weight = _residual(dtype)
    outs = {name: wc.add_rms_norm_q8(h, delta, weight, EPS, *bits) for name, bits in VARIANTS.items()}
    assert not torch.equal(outs["both"][0], outs["no_add_q"][0])
    assert not torch.equal(outs["8_bit"][0], outs["both"][0])
    assert not torch.equal(outs["8_bit_norm"][1], outs["neither"][1])


def test_add_rms_norm_q8_bit_exact_when_the_mean_is(wc):
    """fp32 rows of 2**-8 times integers: one 32767, the others multiples of 16 up to 2048. Every 16-bit scale is
    2**-8 and every partial sum of squares is exact (squares are multiples of 256 = the ulp below 2**31), so the
    kernel's result must equal the reference's bit for bit."""
    g = _gen(4)
    unit = 2.0**-8
    h = torch.randint(-64, 65, (T, N), generator=g).float() * 16 * unit
    delta = torch.randint(-64, 65, (T, N), generator=g).float() * 16 * unit
    h[:, 0], delta[:, 0] = QMAX16 * unit, 0.0
    h, delta = h.to(DEVICE), delta.to(DEVICE)
    weight = (torch.rand(N, generator=g) + 0.5).to(DEVICE)
    for d in (delta, None):
        got = wc.add_rms_norm_q8(h, d, weight, EPS)
        want = ref.add_rms_norm_q8_torch(h, d, weight, EPS)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- RoPE + KV store


def _rope_inputs(dtype):
    qkv = _randn(T, (H + 2 * KV) * D, seed=5, scale=3.0, dtype=dtype)
    positions = torch.randint(0, P, (T,), generator=_gen(6)).to(DEVICE)
    angles = torch.rand(P, D, generator=_gen(7)) * 6.3
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    slot_mapping = torch.randperm(SLOTS, generator=_gen(8))[:T].to(DEVICE)
    q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
    c, s = cos[positions], sin[positions]  # [T, D]
    parts = [q.reshape(T, H, D) * c[:, None], q.reshape(T, H, D) * s[:, None],
             k.reshape(T, KV, D) * c[:, None], k.reshape(T, KV, D) * s[:, None]]
    rope_scales = torch.stack([_static_scale(p, 0.6) for p in parts]).to(DEVICE)  # [4]
    kv_scales = torch.stack([(k.float().abs().amax(0).view(KV, D).amax(-1) * 0.7 / 127),  # k clamps a little
                             v.float().abs().amax(0).view(KV, D).amax(-1) * 0.8 / 127]).contiguous()  # [2, KV]
    return qkv, positions, cos, sin, slot_mapping, parts, rope_scales, kv_scales


ROPE_PRESENT = {"all": (1, 1, 1, 1), "none": (0, 0, 0, 0), "q_only": (1, 1, 0, 0), "sin_only": (0, 1, 0, 1)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("present", sorted(ROPE_PRESENT))
def test_rope_store_q8_matches_reference(wc, dtype, present):
    qkv, positions, cos, sin, slot_mapping, parts, rope_scales, kv_scales = _rope_inputs(dtype)
    mask = torch.tensor(ROPE_PRESENT[present], dtype=torch.bool, device=DEVICE)
    absent = torch.tensor([0.0, -1.0, -1.0, 0.0], device=DEVICE)  # any value <= 0 marks an absent quantizer
    rope_scales = torch.where(mask, rope_scales, absent)
    if present == "all":  # the static scales make some values clamp, at 16 bits and in the int8 cache
        assert all(_clamps(p, s) > 0 for p, s in zip(parts, rope_scales))
    caches = [torch.zeros(SLOTS, KV, D, dtype=torch.int8, device=DEVICE) for _ in range(4)]
    got = wc.rope_store_q8(qkv, positions, cos, sin, caches[0], caches[1], slot_mapping, H, KV, D,
                           rope_scales, kv_scales)
    want = ref.rope_store_q8_torch(qkv, positions, cos, sin, caches[2], caches[3], slot_mapping, H, KV, D,
                                   rope_scales, kv_scales)
    for name, a, b in zip(("q8", "qs", "k8", "v8"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
    q8, qs, k8, v8 = got
    assert q8.shape == (T, H, D) and k8.shape == (T, KV, D) and qs.shape == (T,)
    assert q8.abs().amax(dim=(1, 2)).eq(127).all()  # per token across all heads: each row reaches 127 once
    assert k8.abs().eq(127).sum() > 1 and v8.abs().eq(127).sum() > 1  # the cache scales clamp some values
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    assert torch.equal(caches[0][slot_mapping], k8) and torch.equal(caches[1][slot_mapping], v8)
    untouched = torch.ones(SLOTS, dtype=torch.bool, device=DEVICE)
    untouched[slot_mapping] = False
    assert caches[0][untouched].eq(0).all() and caches[1][untouched].eq(0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_quantizers_change_q(wc, dtype):
    qkv, positions, cos, sin, slot_mapping, _, rope_scales, kv_scales = _rope_inputs(dtype)
    outs = []
    for scales in (rope_scales, torch.full_like(rope_scales, -1.0)):
        caches = [torch.zeros(SLOTS, KV, D, dtype=torch.int8, device=DEVICE) for _ in range(2)]
        outs.append(wc.rope_store_q8(qkv, positions, cos, sin, *caches, slot_mapping, H, KV, D, scales, kv_scales))
    assert not torch.equal(outs[0][0], outs[1][0]) and not torch.equal(outs[0][2], outs[1][2])


# ------------------------------------------------------------------------------------------- SiLU * up


def _gate_up(dtype, width=N):
    gate_up = _randn(T, 2 * width, seed=9, scale=3.0, dtype=dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    act = nn.functional.silu(gate.float()).to(dtype)
    return gate_up, _static_scale(gate, 0.7), torch.stack([_static_scale(act, 0.6), _static_scale(up, 0.8)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("silu_q,mul_q", [(True, True), (False, False), (True, False), (False, True)])
def test_silu_mul_q8_matches_reference(wc, dtype, silu_q, mul_q):
    gate_up, silu_scale, mul_scales = _gate_up(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert _clamps(gate, silu_scale) > 0 and _clamps(up, mul_scales[1]) > 0
    silu_scale, mul_scales = (silu_scale if silu_q else None), (mul_scales if mul_q else None)
    m8, ms = wc.silu_mul_q8(gate_up, silu_scale, mul_scales)
    m8_want, ms_want = ref.silu_mul_q8_torch(gate_up, silu_scale, mul_scales)
    assert m8.shape == (T, N) and m8.dtype == torch.int8 and ms.shape == (T,)
    assert torch.equal(m8, m8_want) and torch.equal(ms, ms_want)


def test_silu_mul_q8_spans_blocks(wc):
    """A row wider than one block (1024 columns) and not a power of two: three programs a row in each pass."""
    gate_up, silu_scale, mul_scales = _gate_up(torch.float16, width=2500)
    got = wc.silu_mul_q8(gate_up, silu_scale, mul_scales)
    want = ref.silu_mul_q8_torch(gate_up, silu_scale, mul_scales)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_silu_mul_quantizers_change_the_result(wc):
    gate_up, silu_scale, mul_scales = _gate_up(torch.float16)
    with_q = wc.silu_mul_q8(gate_up, silu_scale, mul_scales)
    without = wc.silu_mul_q8(gate_up, None, None)
    assert not torch.equal(with_q[0], without[0])


# ------------------------------------------------------------------------------------------- bad input


def _bad_calls(wc):
    h, delta, weight = _residual(torch.float16)
    qkv, positions, cos, sin, slot_mapping, _, rope_scales, kv_scales = _rope_inputs(torch.float16)
    caches = [torch.zeros(SLOTS, KV, D, dtype=torch.int8, device=DEVICE) for _ in range(2)]
    gate_up, silu_scale, mul_scales = _gate_up(torch.float16)
    rope = (qkv, positions, cos, sin, *caches, slot_mapping, H, KV, D, rope_scales, kv_scales)
    return {
        "int h": (wc.add_rms_norm_q8, (h.int(), None, weight, EPS), "h must be float16"),
        "delta shape": (wc.add_rms_norm_q8, (h, delta[:, :-1], weight, EPS), "delta must be"),
        "weight dtype": (wc.add_rms_norm_q8, (h, delta, weight.float(), EPS), "weight must be"),
        "add bits": (wc.add_rms_norm_q8, (h, delta, weight, EPS, 17), "add_bits must be"),
        "float cache": (wc.rope_store_q8, (*rope[:4], caches[0].half(), *rope[5:]), "k_cache must be int8"),
        "kv scales": (wc.rope_store_q8, (*rope[:-1], kv_scales[:1]), "kv_scales must be"),
        "rope scales": (wc.rope_store_q8, (*rope[:-2], rope_scales.half(), kv_scales), "rope_scales must be"),
        "head count": (wc.rope_store_q8, (*rope[:7], H + 1, *rope[8:]), "qkv must be"),
        "mul scales": (wc.silu_mul_q8, (gate_up, silu_scale, mul_scales[:1]), "mul_scales must be"),
        "odd width": (wc.silu_mul_q8, (gate_up[:, :-1], None, None), "gate_up must be"),
    }


@pytest.mark.parametrize("case", ["int h", "delta shape", "weight dtype", "add bits", "float cache", "kv scales",
                                  "rope scales", "head count", "mul scales", "odd width"])
def test_bad_input_is_one_clear_value_error(wc, case):
    fn, args, message = _bad_calls(wc)[case]
    with pytest.raises(ValueError, match=message):
        fn(*args)


# ------------------------------------------------------------------------------------------- simulate


def _rule(kind: str, name: str):
    rule = load_rules(NPM).match(kind, name)
    assert rule is not None, f"no rule for {kind} {name}"
    return rule


NUMERICS = Numerics(batch_shared_scale=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm_reference_is_simulate(dtype, with_delta):
    """Steps 1-3 as the simulate path runs them ([1, T, N]: one sequence) equal add_rms_norm_q8_torch."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    layer = "model.layers.0."
    add = QuantAddCommonScalePerToken(AddSlot(), _rule("Add", layer + "add_1"), NUMERICS, layer + "add_1")
    rms = LlamaRMSNorm(N, eps=EPS)
    rms.weight.data = torch.rand(N, generator=_gen(10)) + 0.5
    norm = QuantRMSNorm(rms.to(dtype), _rule("RMSNorm", layer + "input_layernorm"), NUMERICS, "norm")
    linear = LinearQuant(nn.Linear(N, 8, bias=False).to(dtype), _rule("Linear", layer + "self_attn.q_proj"),
                         NUMERICS, "q_proj")
    h = (torch.randn(1, T, N, generator=_gen(11)) * 3).to(dtype)
    delta = (torch.randn(1, T, N, generator=_gen(12)) * 40).to(dtype)
    h_sim = add(h, delta) if with_delta else h
    y_sim = norm(h_sim)  # [1, T, N]
    h_new, x8, xs = ref.add_rms_norm_q8_torch(h[0], delta[0] if with_delta else None, norm.weight.data, EPS)
    assert torch.equal(h_new, h_sim[0])
    if dtype == torch.float32:  # bf16 weights near 1 are already on the 16-bit grid
        assert not torch.equal(norm.weight.data, rms.weight.data)
    if with_delta:
        assert not torch.equal(h_new, h[0] + delta[0])  # the 16-bit add quantizer ran
    q_want, s_want = quantize_rows_reference(y_sim[0])
    assert torch.equal(x8, q_want) and torch.equal(xs, s_want)
    assert torch.equal((x8.float() * xs[:, None]).to(dtype), linear.act_quantizer(y_sim)[0])  # what q_proj sees


def _calibrated(module: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Static quantizers observe one batch (MovingAverage: the first batch sets the range), then freeze."""
    quantizers = [m for m in module.modules() if hasattr(m, "calibrating")]
    for q in quantizers:
        q.calibrating = True
    module(*inputs)
    for q in quantizers:
        q.calibrating = False
    return module


def _frozen_scale(quantizer) -> torch.Tensor:
    return symmetric_scale(torch.maximum(quantizer.running_min.abs(), quantizer.running_max.abs()),
                           quantizer.spec.bits).reshape(())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_mul_reference_is_simulate(dtype):
    layer = "model.layers.0.mlp."
    act = SingleInputQuantActivation(nn.SiLU(), _rule("SiLU", layer + "act_fn"), NUMERICS, "act_fn")
    mul = QuantBinary(MulSlot(), _rule("Mul", layer + "mul"), NUMERICS, "mul")
    gate_up = (torch.randn(1, T, 2 * N, generator=_gen(13)) * 3).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    _calibrated(act, gate * 0.7)  # calibrated on smaller values: the largest clamp
    _calibrated(mul, act(gate) * 0.6, up * 0.8)
    m_sim = mul(act(gate), up)[0]  # [T, N]
    scales = torch.stack([_frozen_scale(mul.quantizer_in1), _frozen_scale(mul.quantizer_in2)])
    m8, ms = ref.silu_mul_q8_torch(gate_up[0], _frozen_scale(act.quantizer), scales)
    q_want, s_want = quantize_rows_reference(m_sim)
    assert torch.equal(m8, q_want) and torch.equal(ms, s_want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_reference_is_simulate(dtype):
    """RoPE's QuantAdd on [B, heads, S, D] as llama_slots runs it, then Q's per-token int8 across all heads.
    Both sides are torch (the reference and the simulate modules, whose observers live on the CPU): on the CPU."""
    qkv, positions, cos, sin, slot_mapping = (t.cpu() for t in _rope_inputs(dtype)[:5])
    layer = "model.layers.0.self_attn."
    adds = {}
    for x, name, heads, offset in (("q", "rotary_add_q", H, 0), ("k", "rotary_add_k", KV, H * D)):
        part = qkv[:, offset:offset + heads * D].reshape(1, T, heads, D).transpose(1, 2)  # [1, heads, T, D]
        c, s = cos[positions][None, None], sin[positions][None, None]  # [1, 1, T, D]
        add = QuantBinary(AddSlot(), _rule("Add", layer + name), NUMERICS, name)
        _calibrated(add, part * c * 0.6, rotate_half(part) * s * 0.7)
        adds[x] = (add, add(part * c, rotate_half(part) * s))  # [1, heads, T, D]
    rope_scales = torch.stack([_frozen_scale(getattr(adds[x][0], f"quantizer_in{i}")) for x in "qk" for i in (1, 2)])
    kv_scales = torch.full((2, KV), 0.05)
    caches = [torch.zeros(SLOTS, KV, D, dtype=torch.int8) for _ in range(2)]
    q8, qs, k8, _ = ref.rope_store_q8_torch(qkv, positions, cos, sin, *caches, slot_mapping, H, KV, D,
                                            rope_scales, kv_scales)
    q_sim = adds["q"][1][0].transpose(0, 1).reshape(T, H * D)
    q_want, s_want = quantize_rows_reference(q_sim)
    assert torch.equal(q8.reshape(T, H * D), q_want) and torch.equal(qs, s_want)
    k_sim = adds["k"][1][0].transpose(0, 1)  # [T, KV, D]
    assert torch.equal(k8, kv_cache.quantize(k_sim, kv_scales[0], torch.int8))


# ------------------------------------------------------------------------------------------- GPU, model widths


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_match_references_at_70b_widths(wc, dtype):
    """One tensor-parallel shard's widths of Llama-2-70B (TP 8): N 8192, 8 q heads, 1 KV head, D 128, I 3584."""
    t, n, heads, kv, d, inter = 37, 8192, 8, 1, 128, 3584
    h = _randn(t, n, seed=20, scale=2.0, dtype=dtype)
    delta = _randn(t, n, seed=21, scale=30.0, dtype=dtype)
    weight = (torch.rand(n, generator=_gen(22)) + 0.5).to(dtype).to(DEVICE)
    got, want = wc.add_rms_norm_q8(h, delta, weight, EPS), ref.add_rms_norm_q8_torch(h, delta, weight, EPS)
    assert torch.equal(got[0], want[0])
    _assert_one_rounding(got[1:], want[1:], dtype)
    qkv = _randn(t, (heads + 2 * kv) * d, seed=23, scale=3.0, dtype=dtype)
    positions = torch.randint(0, 4096, (t,), generator=_gen(24)).to(DEVICE)
    angles = torch.rand(4096, d, generator=_gen(25)) * 6.3
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    slots = torch.randperm(512, generator=_gen(26))[:t].to(DEVICE)
    rope_scales = torch.full((4,), 4.0 / QMAX16, device=DEVICE)
    kv_scales = torch.full((2, kv), 0.03, device=DEVICE)
    caches = [torch.zeros(512, kv, d, dtype=torch.int8, device=DEVICE) for _ in range(4)]
    got = wc.rope_store_q8(qkv, positions, cos, sin, caches[0], caches[1], slots, heads, kv, d, rope_scales, kv_scales)
    want = ref.rope_store_q8_torch(qkv, positions, cos, sin, caches[2], caches[3], slots, heads, kv, d, rope_scales,
                                   kv_scales)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    gate_up = _randn(t, 2 * inter, seed=27, scale=3.0, dtype=dtype)
    scales = torch.full((2,), 6.0 / QMAX16, device=DEVICE)
    got = wc.silu_mul_q8(gate_up, torch.tensor(5.0 / QMAX16, device=DEVICE), scales)
    want = ref.silu_mul_q8_torch(gate_up, torch.tensor(5.0 / QMAX16, device=DEVICE), scales)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
