"""Persistent Triton GEMM for 8-bit operands (FP8 E4M3 or int8) with the W8A8 rescale fused in its epilogue.

    out[m, n] = acc[m, n] * s_x[m] * s_w[n]  (+ bias[n]),   acc = sum_k qx[m, k] * qw[n, k]

acc is int32 for int8 (exact) and float32 for fp8; the epilogue multiplies in that order, in float32, as
`int8_linear.rescale_reference` and `fp8.reference_gemm` do, each operation rounded on its own: the kernel is
compiled with `enable_fp_fusion=False`, since by default the compiler contracts `* s_w[n] + bias[n]` into one fma
(one rounding fewer than the torch statement; found in the PTX, session 17). Hopper's fp8 tensor-core instruction keeps its
running sum in reduced precision, so by default the K loop is cut into chunks of `promote_every` (at most 128)
elements: each chunk's product starts from zero and is added to the float32 accumulator by ordinary fp32 adds
(DeepGEMM's promotion; Triton does not fold `acc + dot(a, b)` into one fp8 dot on sm_90, so the adds stay).
`promote_every=0` is the named fast variant without promotion (`torch._scaled_mm(use_fast_accum=True)`'s
trade); `promote_by="mma"` asks Triton's own upcast (`max_num_imprecise_acc`) instead of explicit adds.

Operands as stored: qx [M, K] and qw [N, K] row-major (an nn.Linear weight, no [K, N] copy); both are read as
K-major tiles, the layout Hopper's fp8 MMA wants. One program per SM loops over output tiles in grouped order
(GROUP_M tile rows share a weight panel in L2). On sm_90+ the operand tiles and the output tile move by TMA
(host `TensorDescriptor`s); elsewhere, and under TRITON_INTERPRET=1 (the CPU tests), by pointer loads.
Autotuned per (M bucket, N, K, kind, promotion); `config=` runs one fixed tile shape (tests).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from mlperf_llama2.errors import UserError

KINDS = ("fp8", "int8")
PROMOTE_BY = ("adds", "mma")
MAX_PROMOTE = 128  # Hopper's fp8 MMA sum stays accurate over at most this many K elements (DeepGEMM)
M_BUCKET_MAX = 16384
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_OPERAND_DTYPE = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


@dataclasses.dataclass(frozen=True)
class Gemm8Config:
    """One tile shape: BM x BN output tile, BK elements of K per step; launch parameters."""

    bm: int = 128
    bn: int = 128
    bk: int = 128
    group_m: int = 8
    stages: int = 4
    warps: int = 8

    def as_triton(self) -> triton.Config:
        return triton.Config({"BM": self.bm, "BN": self.bn, "BK": self.bk, "GROUP_M": self.group_m},
                             num_stages=self.stages, num_warps=self.warps, pre_hook=_set_block_shapes)


def _set_block_shapes(nargs) -> None:
    """The TMA descriptors' tile shapes follow the config being launched (autotune pre-hook)."""
    if not nargs["USE_TMA"]:
        return
    nargs["a"].block_shape = [nargs["BM"], nargs["BK"]]
    nargs["b"].block_shape = [nargs["BN"], nargs["BK"]]
    nargs["c"].block_shape = [nargs["BM"], nargs["BN"]]


# (BM, BN, BK, stages, warps), sized for the Llama-2-70B projections (K 8192 / 28672; N 8192 .. 57344):
# big tiles when M fills the machine; narrow N tiles for small M so N / BN tiles still cover 132 SMs.
# Kept to seven: each one compiles once per (variant, K), and tools/bench_gemm.py must autotune in minutes.
_TILES = [
    (128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 64, 5, 4),
    (64, 256, 128, 4, 4), (64, 128, 128, 5, 4), (64, 64, 128, 6, 4),
]
CONFIGS = [Gemm8Config(bm, bn, bk, 8, s, w) for bm, bn, bk, s, w in _TILES]


def _prune(configs, named_args, **kwargs):
    """Drop tile shapes that cannot serve this call: BK must divide the promotion interval, and tiles far
    taller than the M bucket only waste MMA work (and autotune time)."""
    adds = kwargs.get("PROMOTE_ADDS", named_args.get("PROMOTE_ADDS"))
    promote, bucket = kwargs.get("PROMOTE", named_args.get("PROMOTE")), named_args["M_BUCKET"]
    kept = [c for c in configs
            if (not adds or promote % c.kwargs["BK"] == 0)
            and c.kwargs["BM"] <= max(64, bucket)
            and (bucket >= 256 or c.kwargs["BN"] <= 128)]
    return kept or configs[-1:]


def _autotune_bench(fn, quantiles):
    # short timing runs: the 70B benchmark autotunes ~200 (shape, M bucket, variant) keys
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M consecutive tile rows sweep the N tiles together (weight panels reused in L2)."""
    per_group = GROUP_M * num_n
    first_m = (tile // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % size_m
    pid_n = (tile % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _load_a(a, m0, k0, M, K, offs_m, offs_k, USE_TMA: tl.constexpr):
    if USE_TMA:
        return a.load([m0, k0])  # [BM, BK]; out-of-range rows and columns come back as zeros
    else:
        rm = m0 + offs_m
        rk = k0 + offs_k
        mask = (rm[:, None] < M) & (rk[None, :] < K)
        return tl.load(a + rm[:, None].to(tl.int64) * K + rk[None, :], mask=mask, other=0.0)


@triton.jit
def _load_b(b, n0, k0, N, K, offs_n, offs_k, USE_TMA: tl.constexpr):
    if USE_TMA:
        return b.load([n0, k0])  # [BN, BK]
    else:
        rn = n0 + offs_n
        rk = k0 + offs_k
        mask = (rn[:, None] < N) & (rk[None, :] < K)
        return tl.load(b + rn[:, None].to(tl.int64) * K + rk[None, :], mask=mask, other=0.0)


@triton.jit
def _gemm8_tile(a, b, sx_ptr, sw_ptr, bias_ptr, c, tile, M, N, K: tl.constexpr,
                IS_FP8: tl.constexpr, PROMOTE: tl.constexpr, PROMOTE_ADDS: tl.constexpr, PROMOTE_IN_MMA: tl.constexpr,
                HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """One BM x BN output tile: the K loop, then the rescale epilogue and the store."""
    pid_m, pid_n = _tile_coords(tile, tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    m0 = pid_m * BM
    n0 = pid_n * BN
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    k_steps: tl.constexpr = (K + BK - 1) // BK
    if IS_FP8:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    if PROMOTE_ADDS:
        # each chunk of PROMOTE elements of K sums from zero inside the MMA; fp32 adds join the chunks
        chunk_steps: tl.constexpr = PROMOTE // BK
        for ks in range(0, k_steps, chunk_steps):
            part = tl.zeros((BM, BN), dtype=tl.float32)
            for j in tl.static_range(chunk_steps):
                x = _load_a(a, m0, (ks + j) * BK, M, K, offs_m, offs_k, USE_TMA)  # [BM, BK]
                w = _load_b(b, n0, (ks + j) * BK, N, K, offs_n, offs_k, USE_TMA)  # [BN, BK]
                part = tl.dot(x, w.T, part, out_dtype=tl.float32)
            acc += part
    elif PROMOTE_IN_MMA:
        imprecise: tl.constexpr = PROMOTE if PROMOTE < BK else BK  # Triton's limit: at most the dot's K
        for ks in range(0, k_steps):
            x = _load_a(a, m0, ks * BK, M, K, offs_m, offs_k, USE_TMA)
            w = _load_b(b, n0, ks * BK, N, K, offs_n, offs_k, USE_TMA)
            acc = tl.dot(x, w.T, acc, max_num_imprecise_acc=imprecise, out_dtype=tl.float32)
    else:
        for ks in range(0, k_steps):
            x = _load_a(a, m0, ks * BK, M, K, offs_m, offs_k, USE_TMA)
            w = _load_b(b, n0, ks * BK, N, K, offs_n, offs_k, USE_TMA)
            acc = tl.dot(x, w.T, acc, out_dtype=acc.dtype)
    rm = m0 + offs_m
    rn = n0 + offs_n
    sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)  # [BM] float32
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)  # [BN] float32
    y = acc.to(tl.float32) * sx[:, None] * sw[None, :]  # [BM, BN]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if USE_TMA:
        c.store([m0, n0], y.to(c.dtype))
    else:
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(c + rm[:, None].to(tl.int64) * N + rn[None, :], y.to(c.dtype.element_ty), mask=mask)


@triton.jit
def _gemm8_kernel(a, b, sx_ptr, sw_ptr, bias_ptr, c, M, N, M_BUCKET, K: tl.constexpr,
                  IS_FP8: tl.constexpr, PROMOTE: tl.constexpr, PROMOTE_ADDS: tl.constexpr,
                  PROMOTE_IN_MMA: tl.constexpr, HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
                  NUM_PROGRAMS: tl.constexpr, INTERPRET: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # a: qx [M, K]; b: qw [N, K] (both K-major, 8-bit); c: out [M, N]; tensors, or TMA descriptors if USE_TMA
    num_tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
    if INTERPRET:  # Triton 3.6's interpreter cannot take a runtime loop bound under numpy >= 2.4
        tile = tl.program_id(0)
        while tile < num_tiles:
            _gemm8_tile(a, b, sx_ptr, sw_ptr, bias_ptr, c, tile, M, N, K, IS_FP8, PROMOTE, PROMOTE_ADDS,
                        PROMOTE_IN_MMA, HAS_BIAS, USE_TMA, BM, BN, BK, GROUP_M)
            tile += NUM_PROGRAMS
    else:
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS):
            _gemm8_tile(a, b, sx_ptr, sw_ptr, bias_ptr, c, tile, M, N, K, IS_FP8, PROMOTE, PROMOTE_ADDS,
                        PROMOTE_IN_MMA, HAS_BIAS, USE_TMA, BM, BN, BK, GROUP_M)


_gemm8_autotuned = triton.autotune(
    configs=[cfg.as_triton() for cfg in CONFIGS],
    key=["M_BUCKET", "N", "K", "IS_FP8", "PROMOTE", "PROMOTE_ADDS", "PROMOTE_IN_MMA", "HAS_BIAS", "USE_TMA"],
    prune_configs_by={"early_config_prune": _prune},
    do_bench=_autotune_bench,
)(_gemm8_kernel)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _tma_ok(qx: torch.Tensor, qw: torch.Tensor, out: torch.Tensor) -> bool:
    """TMA on sm_90+: 16-byte aligned bases and row strides (K % 16 for 8-bit operands, N % 8 for 16-bit out)."""
    if not qx.is_cuda or torch.cuda.get_device_capability(qx.device)[0] < 9:
        return False
    aligned = all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in (qx, qw, out))
    return aligned


def check_args(qx: torch.Tensor, qw: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, kind: str,
               promote_every: int, promote_by: str) -> None:
    """One clear error for a call the kernel cannot serve (wrong dtype, shape or promotion interval)."""
    if kind not in KINDS:
        raise UserError(f"gemm8 kind must be one of {', '.join(KINDS)}, got {kind!r}")
    want = _OPERAND_DTYPE[kind]
    if qx.dtype != want or qw.dtype != want or qx.dim() != 2 or qw.dim() != 2:
        raise UserError(f"gemm8 {kind} needs 2-D {want} operands, got {qx.dtype} {tuple(qx.shape)} and "
                        f"{qw.dtype} {tuple(qw.shape)}")
    if qx.shape[1] != qw.shape[1]:
        raise UserError(f"gemm8: qx [M, K] and qw [N, K] disagree on K: {tuple(qx.shape)} vs {tuple(qw.shape)}")
    if s_x.shape != (qx.shape[0],) or s_w.shape != (qw.shape[0],):
        raise UserError(f"gemm8: scales must be float32 [M] and [N], got {tuple(s_x.shape)} and {tuple(s_w.shape)}")
    if promote_by not in PROMOTE_BY:
        raise UserError(f"gemm8 promote_by must be one of {', '.join(PROMOTE_BY)}, got {promote_by!r}")
    if promote_every < 0 or promote_every > MAX_PROMOTE or (promote_every and promote_every % 32):
        raise UserError(f"gemm8 promote_every must be 0 (no promotion) or a multiple of 32 up to {MAX_PROMOTE}, "
                        f"got {promote_every}")


def gemm8(qx: torch.Tensor, qw: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: Optional[torch.Tensor],
          out_dtype: torch.dtype, *, kind: str = "fp8", promote_every: int = MAX_PROMOTE, promote_by: str = "adds",
          config: Optional[Gemm8Config] = None, num_programs: Optional[int] = None,
          tma: Optional[bool] = None) -> torch.Tensor:
    """qx [M, K] x qw [N, K] (8-bit, row-major as stored) -> out_dtype [M, N] = acc * s_x[m] * s_w[n] (+ bias).

    kind "fp8" (e4m3, float32 accumulator promoted every `promote_every` elements of K, 0 = never) or "int8"
    (int32 accumulator, exact; promotion does not apply). `config` fixes the tile shape instead of autotuning;
    `num_programs` caps the persistent grid (default: one program per SM); `tma` forces the TMA or pointer path
    (default: TMA where the GPU and the alignment allow it)."""
    check_args(qx, qw, s_x, s_w, kind, promote_every, promote_by)
    m, k = qx.shape
    n = qw.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=qx.device)
    if m == 0:
        return out
    qx, qw = qx.contiguous(), qw.contiguous()
    is_fp8 = kind == "fp8"
    promote = promote_every if is_fp8 else 0
    in_mma = is_fp8 and promote_by == "mma" and promote > 0
    use_tma = _tma_ok(qx, qw, out) if tma is None else tma
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        a, b, c = (TensorDescriptor.from_tensor(t, [1, 1]) for t in (qx, qw, out))  # tile shapes set per config
    else:
        a, b, c = qx, qw, out
    if num_programs is None:
        num_programs = _num_sms(qx.device.index or 0) if qx.is_cuda else 4
    args = dict(IS_FP8=is_fp8, PROMOTE=promote, PROMOTE_ADDS=bool(promote) and not in_mma, PROMOTE_IN_MMA=in_mma,
                HAS_BIAS=bias is not None, USE_TMA=use_tma, NUM_PROGRAMS=num_programs, INTERPRET=_INTERPRET)
    bucket = min(triton.next_power_of_2(m), M_BUCKET_MAX)  # autotune once per M range, not per M
    bias_arg = bias if bias is not None else s_w
    if config is None and not _INTERPRET:
        def grid(meta):
            return (min(num_programs, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)

        _gemm8_autotuned[grid](a, b, s_x, s_w, bias_arg, c, m, n, bucket, k, enable_fp_fusion=False, **args)
        return out
    cfg = config or Gemm8Config(bm=16, bn=32, bk=32, group_m=2, stages=1, warps=4)
    if promote and not in_mma and promote % cfg.bk:
        raise UserError(f"gemm8: promote_every={promote} must be a multiple of the tile's BK={cfg.bk}")
    if use_tma:
        _set_block_shapes({"a": a, "b": b, "c": c, "USE_TMA": True, "BM": cfg.bm, "BN": cfg.bn, "BK": cfg.bk})
    grid = (min(num_programs, triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn)),)
    _gemm8_kernel[grid](a, b, s_x, s_w, bias_arg, c, m, n, bucket, k, BM=cfg.bm, BN=cfg.bn, BK=cfg.bk,
                        GROUP_M=cfg.group_m, num_stages=cfg.stages, num_warps=cfg.warps, enable_fp_fusion=False,
                        **args)
    return out


def gemm8_reference(qx: torch.Tensor, qw: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                    bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """The torch statement of the same result: exact int64 sums for int8, a float64 sum for fp8 (products of
    two e4m3 values are exact), then the float32 rescale in the kernel's order."""
    if qx.dtype == torch.int8:  # exact in float64 (|sum| <= K * 127^2 < 2^53); CUDA has no int64 matmul
        acc = (qx.double() @ qw.double().t()).to(torch.float32)
    else:
        acc = (qx.double() @ qw.double().t()).float()
    y = acc * s_x[:, None] * s_w[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
