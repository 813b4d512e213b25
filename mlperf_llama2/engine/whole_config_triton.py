"""The whole-config int8 mode's elementwise steps: each producer kernel also runs the 16-bit quantizers around it.

Three kernels; whole_config_ref.py states each in torch (what the eager path runs; re-exported here):

    add_rms_norm_q8(h, delta, w, eps)        -> (h_new [T, N], x8 [T, N] int8, xs [T])       steps 1, 2, 3
    rope_store_q8(qkv, positions, cos, ...)  -> (q8 [T, H, D], qs [T], k8 [T, KV, D], v8)     steps 4, 5, 6
    silu_mul_q8(gate_up, s_silu, s_mul)      -> (m8 [T, I] int8, ms [T])                      steps 11, 3

(silu_mul_q8 runs fused_quant_triton's two SiLU·up passes, the FP8 / int8-Linear modes' own, with the 16-bit
quantizers switched on.)

Contract: the kernels equal the torch references (`*_torch`, the simulate path's numerics) bit for bit,
except where two implementations of one fp32 primitive may differ in the last bit (the RMSNorm mean's
summation order; exp in SiLU under the CPU interpreter), as in fused_triton.py. A 16-bit quantizer is
fq(x, s) = (clamp(rne(x.float() / s), -qmax, qmax) * s).to(dt) with a correctly rounded division; dynamic
scales are max(absmax / qmax, FLT_TINY). A quantizer that a config lacks is skipped: add_bits / norm_bits
None, a rope scale <= 0, silu_scale / mul_scales None.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from mlperf_llama2.engine.fused_quant_triton import _FP32_TINY, _quantize, _row_scale, silu_mul_split
from mlperf_llama2.engine.fused_triton import _INTERPRET, _fq, _quant_kv, _rsqrt
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.whole_config_ref import (  # noqa: F401 - the references, importable from here too
    ACT_BITS, add_rms_norm_q8_torch, rope_store_q8_torch, silu_mul_q8_torch)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _qmax(bits: int) -> float:
    return float(2 ** (bits - 1) - 1)


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _fq_if(x, scale, QMAX: tl.constexpr, INTERPRET: tl.constexpr):
    """_fq when scale > 0 (a runtime scalar), else x unchanged: the quantizer is absent."""
    present = scale > 0.0
    return tl.where(present, _fq(x, tl.where(present, scale, 1.0), QMAX, INTERPRET), x)


@triton.jit
def _dyn_scale(amax, QMAX: tl.constexpr):
    return tl.maximum(tl.div_rn(amax, QMAX), _FP32_TINY)


@triton.jit
def _add_rms_norm_q8_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, q_ptr, s_ptr, eps, n_cols,
                            stride_h, stride_d, stride_ho, stride_q,
                            HAS_DELTA: tl.constexpr, ADD_QMAX: tl.constexpr, NORM_QMAX: tl.constexpr,
                            BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    # one program per row; ADD_QMAX / NORM_QMAX 0: that quantizer is absent
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0)  # [BLOCK] dt
    dt = h.dtype
    if HAS_DELTA:
        d = tl.load(delta_ptr + row * stride_d + cols, mask=mask, other=0.0)
        h32 = h.to(tl.float32)
        d32 = d.to(tl.float32)
        if ADD_QMAX > 0:  # step 1: one scale for both inputs of the residual add
            # one reduction of the elementwise maximum (max is order-free: the same value as two reductions)
            s_add = _dyn_scale(tl.max(tl.maximum(tl.abs(h32), tl.abs(d32)), axis=0), ADD_QMAX)
            h32 = _fq(h32, s_add, ADD_QMAX, INTERPRET).to(dt).to(tl.float32)
            d32 = _fq(d32, s_add, ADD_QMAX, INTERPRET).to(dt).to(tl.float32)
        h = (h32 + d32).to(dt)
        tl.store(h_out_ptr + row * stride_ho + cols, h, mask=mask)
    x32 = h.to(tl.float32)
    if NORM_QMAX > 0:  # step 2: RMSNorm's own input quantizer, per token
        s_norm = _dyn_scale(tl.max(tl.abs(x32), axis=0), NORM_QMAX)
        x32 = _fq(x32, s_norm, NORM_QMAX, INTERPRET).to(dt).to(tl.float32)
    var = tl.sum(x32 * x32, axis=0) / n_cols
    y = (x32 * _rsqrt(var + eps, INTERPRET)).to(dt)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = (w.to(tl.float32) * y.to(tl.float32)).to(w.dtype).to(tl.float32)
    scale = _row_scale(tl.max(tl.abs(out), axis=0), False)  # step 3: the next Linear's int8 input
    tl.store(q_ptr + row * stride_q + cols, _quantize(out, scale, False, INTERPRET), mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def _rope_q(x1, x2, c1, c2, s1, s2, s_c, s_s, QMAX: tl.constexpr, INTERPRET: tl.constexpr):
    """RoPE with QuantAdd: fq(x * cos) + fq(rotate_half(x) * sin), each product and the sum rounded to dt.
    x1, x2: the halves [R, half] of x (dt); c*, s*: [1, half] fp32. Returns the rotated halves, dt."""
    dt = x1.dtype
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    a1 = _fq_if((f1 * c1).to(dt).to(tl.float32), s_c, QMAX, INTERPRET).to(dt).to(tl.float32)
    a2 = _fq_if((f2 * c2).to(dt).to(tl.float32), s_c, QMAX, INTERPRET).to(dt).to(tl.float32)
    b1 = _fq_if((-f2 * s1).to(dt).to(tl.float32), s_s, QMAX, INTERPRET).to(dt).to(tl.float32)
    b2 = _fq_if((f1 * s2).to(dt).to(tl.float32), s_s, QMAX, INTERPRET).to(dt).to(tl.float32)
    return (a1 + b1).to(dt), (a2 + b2).to(dt)


@triton.jit
def _rope_store_q8_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, rope_s_ptr, kv_s_ptr, slot_ptr,
                          q8_ptr, qs_ptr, k8_ptr, v8_ptr, k_cache_ptr, v_cache_ptr,
                          stride_qkv, stride_cs, stride_cache_s, stride_cache_h,
                          NUM_HEADS: tl.constexpr, NUM_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr, QMAX: tl.constexpr,
                          INTERPRET: tl.constexpr):
    # one program per token, covering all its heads (q's int8 scale spans them all)
    t = tl.program_id(0)
    half: tl.constexpr = HEAD_DIM // 2
    dims = tl.arange(0, half)
    pos = tl.load(pos_ptr + t)
    c1 = tl.load(cos_ptr + pos * stride_cs + dims).to(tl.float32)[None, :]  # [1, half]
    c2 = tl.load(cos_ptr + pos * stride_cs + half + dims).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + pos * stride_cs + dims).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + pos * stride_cs + half + dims).to(tl.float32)[None, :]
    s_qc = tl.load(rope_s_ptr)
    s_qs = tl.load(rope_s_ptr + 1)
    s_kc = tl.load(rope_s_ptr + 2)
    s_ks = tl.load(rope_s_ptr + 3)
    row = qkv_ptr + t.to(tl.int64) * stride_qkv

    # steps 4 and 6: q rotated with its quantizers, then int8 per token across all heads
    heads = tl.arange(0, BLOCK_H)
    is_q = (heads < NUM_HEADS)[:, None]  # [BLOCK_H, 1]
    q_off = heads[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_H, half]
    q1 = tl.load(row + q_off, mask=is_q, other=0.0)
    q2 = tl.load(row + q_off + half, mask=is_q, other=0.0)
    r1, r2 = _rope_q(q1, q2, c1, c2, s1, s2, s_qc, s_qs, QMAX, INTERPRET)
    f1 = r1.to(tl.float32)
    f2 = r2.to(tl.float32)
    amax = tl.maximum(tl.max(tl.max(tl.abs(f1), axis=1), axis=0), tl.max(tl.max(tl.abs(f2), axis=1), axis=0))
    qs = _row_scale(amax, False)
    q_out = q8_ptr + t.to(tl.int64) * (NUM_HEADS * HEAD_DIM) + q_off
    tl.store(q_out, _quantize(f1, qs, False, INTERPRET), mask=is_q)
    tl.store(q_out + half, _quantize(f2, qs, False, INTERPRET), mask=is_q)
    tl.store(qs_ptr + t, qs)

    # step 5: k rotated with its quantizers, k and v to the int8 cache with the layer's static scales
    kv = tl.arange(0, BLOCK_KV)
    is_kv = (kv < NUM_KV)[:, None]  # [BLOCK_KV, 1]
    kv_in = kv[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_KV, half]
    k1 = tl.load(row + NUM_HEADS * HEAD_DIM + kv_in, mask=is_kv, other=0.0)
    k2 = tl.load(row + NUM_HEADS * HEAD_DIM + kv_in + half, mask=is_kv, other=0.0)
    v1 = tl.load(row + (NUM_HEADS + NUM_KV) * HEAD_DIM + kv_in, mask=is_kv, other=0.0)
    v2 = tl.load(row + (NUM_HEADS + NUM_KV) * HEAD_DIM + kv_in + half, mask=is_kv, other=0.0)
    rk1, rk2 = _rope_q(k1, k2, c1, c2, s1, s2, s_kc, s_ks, QMAX, INTERPRET)
    sk = tl.load(kv_s_ptr + kv, mask=kv < NUM_KV, other=1.0)[:, None]  # [BLOCK_KV, 1]
    sv = tl.load(kv_s_ptr + NUM_KV + kv, mask=kv < NUM_KV, other=1.0)[:, None]
    k81, _ = _quant_kv(rk1.to(tl.float32), sk, 1, INTERPRET)
    k82, _ = _quant_kv(rk2.to(tl.float32), sk, 1, INTERPRET)
    v81, _ = _quant_kv(v1.to(tl.float32), sv, 1, INTERPRET)
    v82, _ = _quant_kv(v2.to(tl.float32), sv, 1, INTERPRET)
    kv_out = t.to(tl.int64) * (NUM_KV * HEAD_DIM) + kv_in
    tl.store(k8_ptr + kv_out, k81, mask=is_kv)
    tl.store(k8_ptr + kv_out + half, k82, mask=is_kv)
    tl.store(v8_ptr + kv_out, v81, mask=is_kv)
    tl.store(v8_ptr + kv_out + half, v82, mask=is_kv)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    c_off = slot * stride_cache_s + kv[:, None].to(tl.int64) * stride_cache_h + dims[None, :]
    tl.store(k_cache_ptr + c_off, k81, mask=is_kv)
    tl.store(k_cache_ptr + c_off + half, k82, mask=is_kv)
    tl.store(v_cache_ptr + c_off, v81, mask=is_kv)
    tl.store(v_cache_ptr + c_off + half, v82, mask=is_kv)


# ---------------------------------------------------------------------------------------------- wrappers


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_float(name: str, x: torch.Tensor) -> None:
    _check(x.dtype in _FLOAT_DTYPES, f"{name} must be float16, bfloat16 or float32, got {x.dtype}")


def _check_bits(name: str, bits: Optional[int]) -> float:
    """The quantizer's qmax as the kernel's constexpr; 0.0 for an absent one."""
    if bits is None:
        return 0.0
    _check(isinstance(bits, int) and 2 <= bits <= 16, f"{name} must be None or an int in [2, 16], got {bits!r}")
    return _qmax(bits)


def _check_scales(name: str, s: Optional[torch.Tensor], numel: int, device: torch.device) -> None:
    if s is None:
        return
    _check(s.dtype == torch.float32 and s.numel() == numel and s.is_contiguous(),
           f"{name} must be a contiguous float32 tensor of {numel} value(s), got {s.dtype} {tuple(s.shape)}")
    _check(s.device == device, f"{name} is on {s.device}, the activations on {device}")


def add_rms_norm_q8(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                    add_bits: Optional[int] = ACT_BITS, norm_bits: Optional[int] = ACT_BITS
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h, delta: [T, N] dt; weight: [N] dt (already fake-quantized). Returns (h_new [T, N] dt, x8 [T, N] int8,
    xs [T] float32); delta None: h_new is h itself."""
    _check_float("h", h)
    _check(h.dim() == 2 and h.stride(-1) == 1, f"h must be a [T, N] row-major tensor, got shape {tuple(h.shape)}")
    t, n = h.shape
    if delta is not None:
        _check(delta.dtype == h.dtype and delta.shape == h.shape and delta.stride(-1) == 1,
               f"delta must be {h.dtype} {tuple(h.shape)} like h, got {delta.dtype} {tuple(delta.shape)}")
    _check(weight.dtype == h.dtype and tuple(weight.shape) == (n,) and weight.is_contiguous(),
           f"weight must be {h.dtype} ({n},), got {weight.dtype} {tuple(weight.shape)}")
    _check(delta is None or delta.device == h.device, "h and delta must be on one device")
    _check(weight.device == h.device, "h and weight must be on one device")
    add_qmax, norm_qmax = _check_bits("add_bits", add_bits), _check_bits("norm_bits", norm_bits)
    x8 = torch.empty(t, n, dtype=torch.int8, device=h.device)
    xs = torch.empty(t, dtype=torch.float32, device=h.device)
    h_out = torch.empty_like(h) if delta is not None else h
    if t:
        block = triton.next_power_of_2(n)
        d = delta if delta is not None else h
        launch(_add_rms_norm_q8_kernel, (t,),
            h, d, weight, h_out, x8, xs, eps, n, h.stride(0), d.stride(0), h_out.stride(0), x8.stride(0),
            HAS_DELTA=delta is not None, ADD_QMAX=add_qmax, NORM_QMAX=norm_qmax, BLOCK=block,
            INTERPRET=_INTERPRET, num_warps=min(16, max(4, block // 512)), enable_fp_fusion=False,
        )
    return h_out, x8, xs


def rope_store_q8(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
                  num_kv_heads: int, head_dim: int, rope_scales: torch.Tensor, kv_scales: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv: [T, (H + 2 KV) * D] dt; positions, slot_mapping: [T]; cos, sin: [P, D] dt; caches [S, KV, D] int8;
    rope_scales [4] float32 (s_qc, s_qs, s_kc, s_ks; <= 0: absent); kv_scales [2, KV] float32.
    Stores k8, v8 at their slots; returns (q8 [T, H, D] int8, qs [T] float32, k8 [T, KV, D] int8, v8)."""
    _check_float("qkv", qkv)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    _check(qkv.dim() == 2 and qkv.shape[1] == width and qkv.stride(-1) == 1,
           f"qkv must be [T, {width}] row-major, got {tuple(qkv.shape)}")
    _check(head_dim % 2 == 0 and (head_dim // 2) & (head_dim // 2 - 1) == 0,
           f"head_dim must be twice a power of two, got {head_dim}")
    t = qkv.shape[0]
    for name, table in (("cos", cos), ("sin", sin)):
        _check(table.dtype == qkv.dtype and table.dim() == 2 and table.shape[1] == head_dim
               and table.stride(-1) == 1, f"{name} must be {qkv.dtype} [P, {head_dim}], got "
               f"{table.dtype} {tuple(table.shape)}")
    _check(cos.stride(0) == sin.stride(0), "cos and sin must have one row stride")
    for name, idx in (("positions", positions), ("slot_mapping", slot_mapping)):
        _check(not idx.is_floating_point() and idx.shape == (t,) and idx.is_contiguous(),
               f"{name} must be an integer tensor of shape ({t},), got {idx.dtype} {tuple(idx.shape)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check(cache.dtype == torch.int8 and cache.dim() == 3 and tuple(cache.shape[1:]) == (num_kv_heads, head_dim)
               and cache.stride(-1) == 1, f"{name} must be int8 [S, {num_kv_heads}, {head_dim}], got "
               f"{cache.dtype} {tuple(cache.shape)}")
    _check(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must have the same strides")
    _check_scales("rope_scales", rope_scales, 4, qkv.device)
    _check_scales("kv_scales", kv_scales, 2 * num_kv_heads, qkv.device)
    _check(all(x.device == qkv.device for x in (positions, cos, sin, k_cache, v_cache, slot_mapping)),
           "rope_store_q8's tensors must be on one device")
    q8 = torch.empty(t, num_heads, head_dim, dtype=torch.int8, device=qkv.device)
    qs = torch.empty(t, dtype=torch.float32, device=qkv.device)
    k8 = torch.empty(t, num_kv_heads, head_dim, dtype=torch.int8, device=qkv.device)
    v8 = torch.empty_like(k8)
    if t:
        launch(_rope_store_q8_kernel, (t,),
            qkv, positions, cos, sin, rope_scales, kv_scales, slot_mapping, q8, qs, k8, v8, k_cache, v_cache,
            qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1),
            NUM_HEADS=num_heads, NUM_KV=num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_KV=triton.next_power_of_2(num_kv_heads),
            QMAX=_qmax(ACT_BITS), INTERPRET=_INTERPRET, num_warps=4, enable_fp_fusion=False,
        )
    return q8, qs, k8, v8


def silu_mul_q8(gate_up: torch.Tensor, silu_scale: Optional[torch.Tensor],
                mul_scales: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up: [T, 2 I] dt (gate then up); silu_scale: float32 scalar or None; mul_scales: float32 [2]
    (SiLU output, up) or None. Returns (m8 [T, I] int8, ms [T] float32)."""
    _check_float("gate_up", gate_up)
    _check(gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0 and gate_up.stride(-1) == 1,
           f"gate_up must be a [T, 2 I] row-major tensor, got {tuple(gate_up.shape)}")
    _check_scales("silu_scale", silu_scale, 1, gate_up.device)
    _check_scales("mul_scales", mul_scales, 2, gate_up.device)
    return silu_mul_split(gate_up, "int8", silu_scale, mul_scales, _qmax(ACT_BITS))
