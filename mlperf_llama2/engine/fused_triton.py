"""Triton kernels that fuse the decoder's elementwise work: residual add + RMSNorm, RoPE + KV store, SiLU-gate.

Each replaces a chain of small eager ops (RMSNorm alone is seven kernels) by one kernel, so a
decode step launches ~9 kernels a layer instead of ~35 and prefill reads its activations once.
They reproduce the eager ops' rounding: every intermediate that torch rounds to the model dtype
is rounded here too, in the same order, with the same libdevice functions (IEEE division, expf,
rsqrtf) that ATen's CUDA kernels use. RoPE and SiLU-gate are therefore bit-identical to the eager
ops; RMSNorm differs only in the summation order of its fp32 mean. Every launch passes
`enable_fp_fusion=False`: by default the compiler contracts a product and a sum into one fma (one
rounding fewer than torch's two ops; in fp32 RoPE's `x*cos + rot*sin` became two FFMA per pair,
tools/kernel_sass.py --no-fp-fusion shows the difference). `ops.py` picks these on CUDA and the
eager ops elsewhere.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mlperf_llama2.engine import pdl
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.pdl_triton import pdl_enter

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU interpreter (tests) has no libdevice


@triton.jit
def _exp(x, INTERPRET: tl.constexpr):
    if INTERPRET:
        return tl.exp(x)
    else:
        return libdevice.exp(x)  # expf, as ATen's CUDA kernels


@triton.jit
def _rsqrt(x, INTERPRET: tl.constexpr):
    if INTERPRET:
        return tl.rsqrt(x)
    else:
        return libdevice.rsqrt(x)  # rsqrtf, as torch.rsqrt on CUDA


@triton.jit
def _add_rms_norm_row(h_ptr, delta_ptr, w_ptr, h_out_ptr, row, eps, n_cols, stride_h, stride_d, stride_ho,
                      HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    """One row's residual add (stored to h_out) and RMSNorm, rounded as the eager ops: returns (cols, mask, the
    norm weight row, the weight times the normalised row in fp32, not yet rounded to the weight's dtype)."""
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        d = tl.load(delta_ptr + row * stride_d + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + d.to(tl.float32)).to(h.dtype)  # the residual add, rounded like torch's
        tl.store(h_out_ptr + row * stride_ho + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    var = tl.sum(h32 * h32, axis=0) / n_cols
    y = (h32 * _rsqrt(var + eps, INTERPRET)).to(h.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    return cols, mask, w, w.to(tl.float32) * y.to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, x_out_ptr, eps, n_cols,
                         stride_h, stride_d, stride_ho, stride_xo,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
                         PDL: tl.constexpr = False):
    pdl_enter(PDL)
    row = tl.program_id(0)
    cols, mask, w, x = _add_rms_norm_row(h_ptr, delta_ptr, w_ptr, h_out_ptr, row, eps, n_cols, stride_h, stride_d,
                                         stride_ho, HAS_DELTA, BLOCK, INTERPRET)
    tl.store(x_out_ptr + row * stride_xo + cols, x.to(x_out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h, delta: [T, N]. Returns (h + delta, RMSNorm(h + delta)); without delta, (h, RMSNorm(h))."""
    t, n = h.shape
    x = torch.empty(t, n, dtype=weight.dtype, device=h.device)
    h_out = torch.empty_like(h) if delta is not None else h
    if t:
        block = triton.next_power_of_2(n)
        launch(_add_rms_norm_kernel, (t,),
            h, delta if delta is not None else h, weight, h_out, x, eps, n,
            h.stride(0), (delta if delta is not None else h).stride(0), h_out.stride(0), x.stride(0),
            HAS_DELTA=delta is not None, BLOCK=block, INTERPRET=_INTERPRET, num_warps=min(16, max(4, block // 512)),
            enable_fp_fusion=False, PDL=pdl.enabled(), **pdl.launch_options(),
        )
    return h_out, x


@triton.jit
def _div_by(a, b, INTERPRET: tl.constexpr):
    """a / b correctly rounded (= tl.div_rn(a, b)) for a divisor b shared by many a: a scalar, or a row's value
    broadcast over its columns. One division, for y = RN(1 / b) at b's shape; then per element a product and
    two remainder corrections by fma (exact remainders): the first makes the quotient faithful, the second
    correctly rounded (Markstein's theorem). No branches, so unlike div_rn's slow-path check per element the
    compiler can interleave many of them. b > 0, normal and with a normal reciprocal (every quantizer scale here
    is >= float32 tiny and <= 2^126). Quotients of magnitude >= 2^126 return the plain product (infinite on
    overflow, as div_rn's); below 2^-126 they may differ from div_rn by one subnormal step, which every caller
    rounds to zero (integer grids, or P below a 16-bit value's resolution)."""
    if INTERPRET:
        return tl.div_rn(a, b)
    else:
        y = tl.div_rn(tl.zeros_like(b) + 1.0, b)
        q0 = a * y
        q1 = tl.fma(tl.fma(-q0, b, a), y, q0)
        q2 = tl.fma(tl.fma(-q1, b, a), y, q1)
        return tl.where(tl.abs(q0) < 8.507059173023462e37, q2, q0)  # 2^126


@triton.jit
def _rint(x, INTERPRET: tl.constexpr):
    """Round half to even (fp32; |x| < 2**22 in the interpreter, where 1.5 * 2**23 does the rounding)."""
    if INTERPRET:
        return (x + 12582912.0) - 12582912.0
    else:
        return libdevice.rint(x)


@triton.jit
def _fq(x, scale, QMAX: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 x, fp32 scale (> 0) -> the fake-quantized value, fp32 (the caller rounds it to the model dtype).
    Clamping before rounding equals rounding then clamping (integer bounds) and keeps |y| < 2**22 for _rint."""
    y = tl.minimum(tl.maximum(_div_by(x, scale, INTERPRET), -QMAX), QMAX)
    return _rint(y, INTERPRET) * scale


@triton.jit
def _quant_kv(x, scale, QUANT: tl.constexpr, INTERPRET: tl.constexpr):
    """x: [R, C] fp32; scale: [R, 1] fp32 -> (quant(x / scale) as int8 / float8e4nv, its dequantized fp32 value).

    Rounds as kv_cache.quantize does: int8 half to even, clamp +-127; fp8 E4M3 saturated at +-448 and
    rounded to nearest even in value space (so the interpreter, whose cast flushes subnormals, agrees)."""
    y = _div_by(x, scale, INTERPRET)
    if QUANT == 1:
        q = _rint(tl.minimum(tl.maximum(y, -127.0), 127.0), INTERPRET)
        stored = q.to(tl.int8)
    else:
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
        exp = ((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        exp = tl.maximum(exp, -6)  # subnormals share the smallest normal binade's step
        step = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(exp-3): 3 mantissa bits
        inv_step = ((127 - exp + 3) << 23).to(tl.float32, bitcast=True)
        q = _rint(y * inv_step, INTERPRET) * step  # exact: powers of two
        stored = q.to(tl.float8e4nv)
    return stored, q * scale


@triton.jit
def _rope_store_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, v_out_ptr, k_cache_ptr,
                       v_cache_ptr, slot_ptr, scales_ptr, stride_qkv, stride_cs, stride_cache_s, stride_cache_h,
                       NUM_HEADS: tl.constexpr, NUM_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_H: tl.constexpr, QUANT: tl.constexpr, INTERPRET: tl.constexpr,
                       PDL: tl.constexpr = False):
    pdl_enter(PDL)
    t = tl.program_id(0)
    head0 = tl.program_id(1) * BLOCK_H
    half: tl.constexpr = HEAD_DIM // 2
    heads = head0 + tl.arange(0, BLOCK_H)  # over the fused [q heads | k heads | v heads]
    dims = tl.arange(0, half)
    total: tl.constexpr = NUM_HEADS + 2 * NUM_KV
    in_range = heads < total
    base = qkv_ptr + t * stride_qkv + heads[:, None] * HEAD_DIM + dims[None, :]
    x1 = tl.load(base, mask=in_range[:, None], other=0.0)  # [BLOCK_H, half]
    x2 = tl.load(base + half, mask=in_range[:, None], other=0.0)
    dt = x1.dtype
    pos = tl.load(pos_ptr + t)
    c1 = tl.load(cos_ptr + pos * stride_cs + dims).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + pos * stride_cs + half + dims).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + pos * stride_cs + dims).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + pos * stride_cs + half + dims).to(tl.float32)[None, :]
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    # x * cos + rotate_half(x) * sin, each product and the sum rounded to the model dtype as eager torch does
    r1 = ((f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)).to(dt)
    r2 = ((f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)).to(dt)
    is_q = heads < NUM_HEADS
    is_k = (heads >= NUM_HEADS) & (heads < NUM_HEADS + NUM_KV)
    is_v = (heads >= NUM_HEADS + NUM_KV) & in_range
    q_off = q_out_ptr + (t * NUM_HEADS + heads)[:, None] * HEAD_DIM + dims[None, :]
    tl.store(q_off, r1, mask=is_q[:, None])
    tl.store(q_off + half, r2, mask=is_q[:, None])
    kv_head = tl.where(is_k, heads - NUM_HEADS, heads - NUM_HEADS - NUM_KV)
    k_off = k_out_ptr + (t * NUM_KV + kv_head)[:, None] * HEAD_DIM + dims[None, :]
    slot = tl.load(slot_ptr + t).to(tl.int64)
    c_off = slot * stride_cache_s + kv_head[:, None].to(tl.int64) * stride_cache_h + dims[None, :]
    if QUANT == 0:
        tl.store(k_off, r1, mask=is_k[:, None])
        tl.store(k_off + half, r2, mask=is_k[:, None])
        tl.store(k_cache_ptr + c_off, r1, mask=is_k[:, None])
        tl.store(k_cache_ptr + c_off + half, r2, mask=is_k[:, None])
        tl.store(v_cache_ptr + c_off, x1, mask=is_v[:, None])
        tl.store(v_cache_ptr + c_off + half, x2, mask=is_v[:, None])
    else:
        # 8-bit cache: k rows quantized with the layer's K scale, v rows with its V scale (scales: [2, KV])
        is_kv = is_k | is_v
        scale = tl.load(scales_ptr + tl.where(is_k, kv_head, NUM_KV + kv_head), mask=is_kv, other=1.0)[:, None]
        y1 = tl.where(is_k[:, None], r1, x1).to(tl.float32)
        y2 = tl.where(is_k[:, None], r2, x2).to(tl.float32)
        st1, dq1 = _quant_kv(y1, scale, QUANT, INTERPRET)
        st2, dq2 = _quant_kv(y2, scale, QUANT, INTERPRET)
        tl.store(k_cache_ptr + c_off, st1, mask=is_k[:, None])
        tl.store(k_cache_ptr + c_off + half, st2, mask=is_k[:, None])
        tl.store(v_cache_ptr + c_off, st1, mask=is_v[:, None])
        tl.store(v_cache_ptr + c_off + half, st2, mask=is_v[:, None])
        # what attention reads: the dequantized values, rounded to the model dtype once
        tl.store(k_off, dq1.to(dt), mask=is_k[:, None])
        tl.store(k_off + half, dq2.to(dt), mask=is_k[:, None])
        v_off = v_out_ptr + (t * NUM_KV + kv_head)[:, None] * HEAD_DIM + dims[None, :]
        tl.store(v_off, dq1.to(dt), mask=is_v[:, None])
        tl.store(v_off + half, dq2.to(dt), mask=is_v[:, None])


_QUANT_CODES = {torch.int8: 1, torch.float8_e4m3fn: 2}


def rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
               num_kv_heads: int, head_dim: int,
               kv_scales: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv: [T, (H + 2 KV) * D]; cos, sin: [P, D]; caches [S, KV, D]. Rotates q and k, writes k and v at
    their slots, returns q [T, H, D], k [T, KV, D] (rotated, contiguous) and v [T, KV, D] (a view of qkv).
    8-bit caches (kv_scales [2, KV] float32, contiguous): stores quant(x / scale) and returns k and v
    dequantized (v then a new tensor), exactly as `EagerOps.rope_store`."""
    t = qkv.shape[0]
    quant = 0 if kv_scales is None else _QUANT_CODES[k_cache.dtype]
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(t, num_kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if quant:
        v = torch.empty(t, num_kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    else:
        v = qkv[:, (num_heads + num_kv_heads) * head_dim:].view(t, num_kv_heads, head_dim)
    if t:
        block_h = 16
        grid = (t, triton.cdiv(num_heads + 2 * num_kv_heads, block_h))
        launch(_rope_store_kernel, grid,
            qkv, positions, cos, sin, q, k, v, k_cache, v_cache, slot_mapping,
            kv_scales if quant else k, qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1),
            NUM_HEADS=num_heads, NUM_KV=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, QUANT=quant,
            INTERPRET=_INTERPRET, num_warps=4, enable_fp_fusion=False, PDL=pdl.enabled(), **pdl.launch_options(),
        )
    return q, k, v


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, stride_gu, stride_out, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
                     PDL: tl.constexpr = False):
    pdl_enter(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + n_cols + cols, mask=mask, other=0.0)
    g32 = g.to(tl.float32)
    act = tl.math.div_rn(g32, 1.0 + _exp(-g32, INTERPRET)).to(g.dtype)  # silu, as ATen computes it
    tl.store(out_ptr + row * stride_out + cols, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 I] (gate then up) -> silu(gate) * up: [T, I]."""
    t, two_i = gate_up.shape
    n = two_i // 2
    out = torch.empty(t, n, dtype=gate_up.dtype, device=gate_up.device)
    if t:
        block = 1024
        launch(_silu_mul_kernel, (t, triton.cdiv(n, block)), gate_up, out, n, gate_up.stride(0), out.stride(0),
               BLOCK=block, INTERPRET=_INTERPRET, num_warps=4, enable_fp_fusion=False, PDL=pdl.enabled(),
               **pdl.launch_options())
    return out
