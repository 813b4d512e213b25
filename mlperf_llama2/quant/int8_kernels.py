"""Triton kernels around `torch._int_mm`: per-token int8 quantization and the fused int32 -> float rescale.

Both reproduce int8_linear's torch reference bit for bit: float32 arithmetic, correctly rounded
division (`div_rn`, or fused_triton._div_by's exact equivalent), round half to even (`rint`), the same order of multiplications. This module
imports Triton; int8_linear imports it only on CUDA and falls back to torch when that fails.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mlperf_llama2.engine import pdl
from mlperf_llama2.engine.fused_triton import _div_by  # x / scale correctly rounded, without a division each
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.pdl_triton import pdl_enter


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, stride_x, K: tl.constexpr, BLOCK: tl.constexpr, FP8: tl.constexpr,
                       PDL: tl.constexpr = False):
    """One row: scale = max(amax / qmax, fp32 tiny); int8: clamp(rint(x / scale)); FP8 (E4M3, qmax 448): x / scale
    clamped, rounded to nearest even by the conversion."""
    pdl_enter(PDL)
    QMAX: tl.constexpr = 448.0 if FP8 else 127.0
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * K
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        v = tl.load(x_row + start + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.maximum(tl.div_rn(tl.max(amax, axis=0), QMAX), 1.1754943508222875e-38)  # never 0
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        v = tl.load(x_row + start + offs, mask=mask, other=0.0).to(tl.float32)
        if FP8:
            q = tl.minimum(tl.maximum(_div_by(v, scale, False), -QMAX), QMAX)
            tl.store(q_row + start + offs, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=mask)
        else:
            q = tl.minimum(tl.maximum(libdevice.rint(_div_by(v, scale, False)), -QMAX), QMAX)
            tl.store(q_row + start + offs, q.to(tl.int8), mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def _rescale_kernel(acc_ptr, sx_ptr, sw_ptr, bias_ptr, out_ptr, M, N, HAS_BIAS: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    acc = tl.load(acc_ptr + offs, mask=mask, other=0).to(tl.float32)
    sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    y = acc * sx[:, None] * sw[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _quantize_rows(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=dtype, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    block = min(triton.next_power_of_2(k), 4096)
    launch(_quant_rows_kernel, (m,), x, q, s, x.stride(0), K=k, BLOCK=block, FP8=dtype == torch.float8_e4m3fn,
           num_warps=8 if block >= 2048 else 4, PDL=pdl.enabled(), **pdl.launch_options())
    return q, s


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (CUDA) -> (int8 [M, K], float32 scale [M])."""
    return _quantize_rows(x, torch.int8)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (CUDA) -> (float8_e4m3fn [M, K], float32 scale [M]): quant/fp8.py's numerics in one pass."""
    return _quantize_rows(x, torch.float8_e4m3fn)


def rescale(acc: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: Optional[torch.Tensor],
            dtype: torch.dtype) -> torch.Tensor:
    """int32 [M, N] * s_x[:, None] * s_w[None, :] (+ bias) -> dtype [M, N], one pass."""
    acc = acc.contiguous()
    m, n = acc.shape
    out = torch.empty((m, n), dtype=dtype, device=acc.device)
    bm, bn = 32, 128
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    launch(_rescale_kernel, grid, acc, s_x, s_w, bias if bias is not None else s_w, out, m, n,  # rescale_reference's
           HAS_BIAS=bias is not None, BM=bm, BN=bn, num_warps=4, enable_fp_fusion=False)  # roundings
    return out


def _gemm_configs():
    # (BM, BN, BK, stages, warps): large tiles for large M; small ones keep all SMs busy when M x N is small
    shapes = [(128, 128, 128, 4, 8), (128, 256, 128, 3, 8), (64, 128, 128, 4, 4), (64, 256, 128, 4, 8),
              (128, 64, 128, 4, 4), (32, 128, 256, 4, 4), (16, 128, 256, 5, 4), (64, 64, 128, 5, 4),
              (64, 64, 256, 4, 4), (32, 64, 256, 5, 4)]
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in shapes]


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, sx_ptr, sw_ptr, bias_ptr, c_ptr, M, N, M_BUCKET, K: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      GROUP_M: tl.constexpr):
    # a: [M, K] int8 row-major; b: [N, K] int8 row-major; c: [M, N]
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in range(0, K, BK):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (k + rk[None, :] < K), other=0)
        b = tl.load(b_ptrs, mask=(rn[None, :] < N) & (k + rk[:, None] < K), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BK
        b_ptrs += BK
    sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], y.to(c_ptr.dtype.element_ty), mask=mask)


def fused_int8_matmul(qx: torch.Tensor, qw: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                      bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """int8 [M, K] x int8 [N, K] with the rescale in the GEMM epilogue -> dtype [M, N] (one kernel)."""
    m, k = qx.shape
    n = qw.shape[0]
    out = torch.empty((m, n), dtype=dtype, device=qx.device)
    bucket = min(triton.next_power_of_2(m), 4096)  # autotune once per M range, not per M

    def grid(meta):
        return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

    launch(_int8_gemm_kernel, grid, qx, qw, s_x, s_w, bias if bias is not None else s_w, out, m, n, bucket, K=k,
           HAS_BIAS=bias is not None, enable_fp_fusion=False)  # no fma: rescale_reference's roundings
    return out
