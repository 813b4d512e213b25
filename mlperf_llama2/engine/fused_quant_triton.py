"""Producers that quantize what they produce: add+RMSNorm and SiLU·up writing 8-bit values and per-token scales.

The next GEMM's input (fp8 e4m3 or int8, one float32 scale per token) comes out of the kernel that computes
it, so the 16-bit activation is never written and read back by a separate quantizer:

    add_rms_norm_quant(h, delta, w, eps, kind) -> (h + delta [T, N] 16-bit residual, q [T, N], scale [T])
    silu_mul_quant(gate_up, kind)              -> (q [T, I], scale [T])

Contract: the outputs equal `fused_triton.add_rms_norm` / `silu_mul` followed by the per-token quantizer
(`quantize_rows_torch`), bit for bit: the producer arithmetic is `fused_triton`'s, rounded to the model dtype
at the same places, and the quantizer is the one of int8_linear / quant.fp8: scale = absmax / qmax (correctly
rounded, never 0), int8 = round-half-even(x / scale) clamped to ±127, e4m3 = round-to-nearest-even of
x / scale clamped to ±448. The e4m3 rounding is done explicitly in float32 (the cast then is exact), because
Triton's interpreter rounds fp32 -> e4m3 ties away from zero. engine/ops.py's `EagerOps.add_rms_norm_quant` /
`silu_mul_quant` state the same in torch (any device; kept there so that ops imports this module, not the
reverse); `FusedOps` runs these kernels in the decoder.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mlperf_llama2.engine.fused_triton import (  # the producers' own rounding helpers
    _INTERPRET, _add_rms_norm_row, _div_by, _exp, _fq)
from mlperf_llama2.engine import pdl
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.pdl_triton import pdl_enter
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.int8_linear import quantize_rows_reference

KINDS = ("fp8", "int8")
FP8_MAX = 448.0
INT8_MAX = 127.0
_FP32_TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny: a zero row's scale, never 0
_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + M) - M rounds |x| < 2**22 to nearest even in fp32
_OUT_DTYPE = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
_SILU_BLOCK = 1024  # columns per SiLU·up program


@triton.jit
def _rint(x, INTERPRET: tl.constexpr):
    if INTERPRET:
        return (x + _ROUND_MAGIC) - _ROUND_MAGIC  # |x| <= 128 here; the interpreter has no libdevice
    else:
        return libdevice.rint(x)


@triton.jit
def _round_to_e4m3(v, INTERPRET: tl.constexpr):
    """fp32 |v| <= 448 -> the nearest e4m3 value (ties to even), still in fp32: a power-of-two quantum per
    binade (3 mantissa bits; 2**-9 below the smallest normal 2**-6), so the scaling is exact."""
    bits = v.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    q_exp = tl.maximum(exponent, -6) - 3
    quantum = ((q_exp + 127) << 23).to(tl.float32, bitcast=True)
    inv_quantum = ((127 - q_exp) << 23).to(tl.float32, bitcast=True)
    r = _rint(tl.abs(v) * inv_quantum, INTERPRET) * quantum
    sign = (bits >> 31) << 31  # v's sign bit: tiny negatives round to -0, as torch's cast does
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _row_scale(amax, IS_FP8: tl.constexpr):
    if IS_FP8:
        return tl.maximum(tl.div_rn(amax, 448.0), _FP32_TINY)
    else:
        return tl.maximum(tl.div_rn(amax, 127.0), _FP32_TINY)


@triton.jit
def _quantize(v, scale, IS_FP8: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 values and their row's scale -> 8-bit values, as the torch per-token quantizers compute them."""
    if IS_FP8:
        r = tl.minimum(tl.maximum(_div_by(v, scale, INTERPRET), -448.0), 448.0)
        return _round_to_e4m3(r, INTERPRET).to(tl.float8e4nv)
    else:
        r = _rint(_div_by(v, scale, INTERPRET), INTERPRET)
        return tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)


@triton.jit
def _add_rms_norm_quant_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, q_ptr, s_ptr, eps, n_cols,
                               stride_h, stride_d, stride_ho, stride_q,
                               HAS_DELTA: tl.constexpr, IS_FP8: tl.constexpr, BLOCK: tl.constexpr,
                               INTERPRET: tl.constexpr, PDL: tl.constexpr = False):
    pdl_enter(PDL)
    row = tl.program_id(0)
    cols, mask, w, x = _add_rms_norm_row(h_ptr, delta_ptr, w_ptr, h_out_ptr, row, eps, n_cols, stride_h, stride_d,
                                         stride_ho, HAS_DELTA, BLOCK, INTERPRET)
    x = x.to(w.dtype).to(tl.float32)  # RMSNorm's output in the model dtype
    scale = _row_scale(tl.max(tl.abs(x), axis=0), IS_FP8)
    tl.store(q_ptr + row * stride_q + cols, _quantize(x, scale, IS_FP8, INTERPRET), mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def _silu_mul_value(gu_ptr, row_off, cols, mask, s_silu, s_m1, s_m2, N_COLS: tl.constexpr,
                    HAS_SILU_Q: tl.constexpr, HAS_MUL_Q: tl.constexpr, QMAX: tl.constexpr, INTERPRET: tl.constexpr):
    """silu(gate) * up for one block of a row, rounded to the model dtype dt at ATen's places, returned in fp32;
    the whole-config mode's 16-bit quantizers around it when HAS_SILU_Q (SiLU's input) / HAS_MUL_Q (both
    factors): fq(silu(fq(gate))) * fq(up). Masked lanes give 0."""
    g = tl.load(gu_ptr + row_off + cols, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row_off + N_COLS + cols, mask=mask, other=0.0)
    dt = g.dtype
    g32 = g.to(tl.float32)
    u32 = u.to(tl.float32)
    if HAS_SILU_Q:
        g32 = _fq(g32, s_silu, QMAX, INTERPRET).to(dt).to(tl.float32)
    a32 = tl.math.div_rn(g32, 1.0 + _exp(-g32, INTERPRET)).to(dt).to(tl.float32)  # silu, as ATen computes it
    if HAS_MUL_Q:
        a32 = _fq(a32, s_m1, QMAX, INTERPRET).to(dt).to(tl.float32)
        u32 = _fq(u32, s_m2, QMAX, INTERPRET).to(dt).to(tl.float32)
    return (a32 * u32).to(dt).to(tl.float32)


@triton.jit
def _silu_mul_values_kernel(gu_ptr, silu_s_ptr, mul_s_ptr, v_ptr, amax_ptr, stride_gu, N_COLS: tl.constexpr,
                            SPLITS: tl.constexpr, HAS_SILU_Q: tl.constexpr, HAS_MUL_Q: tl.constexpr,
                            QMAX: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
                            PDL: tl.constexpr = False):
    """Pass 1, one program per (token, BLOCK columns): the values into v [T, N_COLS] (dt: they are dt values, so
    exact) and the block's absmax into amax [T, SPLITS]."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    part = tl.program_id(1)
    s_silu = 1.0
    s_m1 = 1.0
    s_m2 = 1.0
    if HAS_SILU_Q:
        s_silu = tl.load(silu_s_ptr)
    if HAS_MUL_Q:
        s_m1 = tl.load(mul_s_ptr)
        s_m2 = tl.load(mul_s_ptr + 1)
    cols = part * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N_COLS
    v = _silu_mul_value(gu_ptr, row.to(tl.int64) * stride_gu, cols, mask, s_silu, s_m1, s_m2, N_COLS,
                        HAS_SILU_Q, HAS_MUL_Q, QMAX, INTERPRET)
    tl.store(v_ptr + row.to(tl.int64) * N_COLS + cols, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(amax_ptr + row * SPLITS + part, tl.max(tl.abs(v), axis=0))


@triton.jit
def _quant_values_kernel(v_ptr, amax_ptr, q_ptr, s_ptr, stride_q, N_COLS: tl.constexpr, SPLITS: tl.constexpr,
                         BLOCK_S: tl.constexpr, IS_FP8: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
                         PDL: tl.constexpr = False):
    """Pass 2, same grid: the row's scale from its SPLITS block maxima, then the block's 8-bit values."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    part = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    amax = tl.max(tl.load(amax_ptr + row * SPLITS + offs_s, mask=offs_s < SPLITS, other=0.0), axis=0)
    scale = _row_scale(amax, IS_FP8)
    cols = part * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N_COLS
    v = tl.load(v_ptr + row.to(tl.int64) * N_COLS + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(q_ptr + row.to(tl.int64) * stride_q + cols, _quantize(v, scale, IS_FP8, INTERPRET), mask=mask)
    if part == 0:
        tl.store(s_ptr + row, scale)


def _check_kind(kind: str) -> bool:
    if kind not in KINDS:
        raise UserError(f"activation quantization kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind == "fp8"


def add_rms_norm_quant(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                       kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h, delta: [T, N] 16-bit. Returns (h + delta, 8-bit RMSNorm(h + delta) [T, N], float32 scale [T]);
    without delta the residual returned is h itself."""
    is_fp8 = _check_kind(kind)
    t, n = h.shape
    q = torch.empty(t, n, dtype=_OUT_DTYPE[kind], device=h.device)
    scale = torch.empty(t, dtype=torch.float32, device=h.device)
    h_out = torch.empty_like(h) if delta is not None else h
    if t:
        block = triton.next_power_of_2(n)
        d = delta if delta is not None else h
        launch(_add_rms_norm_quant_kernel, (t,),
            h, d, weight, h_out, q, scale, eps, n, h.stride(0), d.stride(0), h_out.stride(0), q.stride(0),
            HAS_DELTA=delta is not None, IS_FP8=is_fp8, BLOCK=block, INTERPRET=_INTERPRET,
            num_warps=min(16, max(4, block // 512)), enable_fp_fusion=False, PDL=pdl.enabled(), **pdl.launch_options(),
        )
    return h_out, q, scale


def silu_mul_quant(gate_up: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up: [T, 2 I] 16-bit (gate then up) -> (8-bit silu(gate) * up [T, I], float32 scale [T])."""
    return silu_mul_split(gate_up, kind)


def silu_mul_split(gate_up: torch.Tensor, kind: str, silu_scale: Optional[torch.Tensor] = None,
                   mul_scales: Optional[torch.Tensor] = None, qmax16: float = 32767.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU·up quantized per token, in two passes over (token, _SILU_BLOCK columns) programs: pass 1 writes the
    16-bit values to a scratch row and each block's absmax, pass 2 reduces the row's maxima to its scale and
    quantizes the block. One program per token (the former kernel: absmax pass, then recompute and quantize)
    left most SMs idle at decode batch sizes: 2.54 ms of an 80-layer FP8 decode step of 256 sequences against
    0.91 + ~0.9 for silu_mul then the separate quantizer (H200, docs/results/profile_step_70b_fp8_fp8kv_h200).
    silu_scale (float32 scalar) / mul_scales (float32 [2]: SiLU output, up): the whole-config mode's 16-bit
    quantizers at qmax16 (None: absent)."""
    is_fp8 = _check_kind(kind)
    t, two_i = gate_up.shape
    n = two_i // 2
    q = torch.empty(t, n, dtype=_OUT_DTYPE[kind], device=gate_up.device)
    scale = torch.empty(t, dtype=torch.float32, device=gate_up.device)
    if t:
        if gate_up.stride(-1) != 1:
            gate_up = gate_up.contiguous()
        block = min(_SILU_BLOCK, triton.next_power_of_2(n))
        splits = triton.cdiv(n, block)
        values = torch.empty(t, n, dtype=gate_up.dtype, device=gate_up.device)  # the 16-bit row, for pass 2
        amax = torch.empty(t, splits, dtype=torch.float32, device=gate_up.device)
        common = dict(N_COLS=n, SPLITS=splits, BLOCK=block, INTERPRET=_INTERPRET, num_warps=4,
                      enable_fp_fusion=False, PDL=pdl.enabled(), **pdl.launch_options())
        launch(_silu_mul_values_kernel, (t, splits),
            gate_up, silu_scale if silu_scale is not None else scale, mul_scales if mul_scales is not None else scale,
            values, amax, gate_up.stride(0), HAS_SILU_Q=silu_scale is not None, HAS_MUL_Q=mul_scales is not None,
            QMAX=qmax16, **common)
        launch(_quant_values_kernel, (t, splits), values, amax, q, scale, q.stride(0),
               BLOCK_S=triton.next_power_of_2(splits), IS_FP8=is_fp8, **common)
    return q, scale


def quantize_rows_fp8_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] -> (e4m3 [T, K], float32 scale [T]): quant.fp8's per-token quantizer, stated in torch."""
    xf = x.float()
    divisor = torch.full((), FP8_MAX, dtype=torch.float32, device=x.device)  # a true division, as the kernel
    scale = (xf.abs().amax(dim=1) / divisor).clamp_min(torch.finfo(torch.float32).tiny)  # [T]
    return (xf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_rows_torch(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused per-token quantizer of each kind: x [T, K] -> (8-bit [T, K], float32 scale [T])."""
    return quantize_rows_fp8_torch(x) if _check_kind(kind) else quantize_rows_reference(x)
