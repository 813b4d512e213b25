"""Paged decode attention of the whole-config int8 mode (w8a8_npm_v1_3_4, spec steps 6-10) as Triton kernels.

Contract: `decode_q8` equals `whole_config_decode.decode_q8_torch` (simulate's numerics) up to float rounding:
the scores are the exact int32 dot q8 . k8 times qs * s_k (rounded to dt), times sm_scale (rounded to dt), then
add_mask's 16-bit quantizer; P.V is the exact int32 dot p8 . v8 times ps * s_v (rounded to dt), then
matmul_pv's 16-bit output quantizer. Every division is correctly rounded, as fake_quant's (div_rn, or
fused_triton._div_by's equal result where the divisor is shared).

P's int8 scale spans all heads of a sequence: ps = max_h max_j P[h, j] / 127, and the largest P of a head is
exp(0) / l_h, so ps = round_dt(1 / min_h l_h) / 127 needs every head's denominator l before any head can
quantize. Hence two passes over the context: pass 1 writes m and l per (sequence, head); pass 2 reads the
sequence's l, recomputes the same scores (or reads them: `scores` below), quantizes P and accumulates p8 . v8
in int32 (tl.dot on int8).
One program per (sequence, KV head) covers its GQA group, as paged_decode_triton's kernels; context lengths
are read on the device, so the grid depends on the batch size only (graph-safe).

`WC_DECODE_CONFIGS` names launch variants, all with the same numbers: tile size, warps and pipeline stages, a
vectorised block-table read (one entry per cache block of a tile), and `scores`: pass 1 also writes the scores
(already rounded to DT and 16-bit quantized, so DT holds them exactly) to a scratch buffer that pass 2 reads
instead of reading K again and recomputing them (2 bytes per head and key instead of 1 per key and head_dim).
The buffer's rows hold whole tiles (padded to a multiple of BLOCK_N; pass 1 writes -inf past the context), so
pass 1 stores without a mask along keys and its eight 2-byte stores a thread become one 16-byte store on sm_90
(tools/kernel_sass.py; pass 1 1.947 against 2.047 ms a whole-config decode step, H100, 256 sequences, 20 layers).
`tools/bench_kv_decode.py --whole-config` times them; `DEFAULT_WC_DECODE_CONFIG` is the engine's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from mlperf_llama2.engine.fused_triton import _INTERPRET, _div_by, _exp, _rint
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.paged_decode_triton import check_launch, tile_slots
from mlperf_llama2.engine.whole_config_decode import check_inputs, decode_q8_torch  # noqa: F401 (re-exported)
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
_FP32_TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny: symmetric_scale's floor
DEFAULT_BLOCK_N = 64  # keys per loop iteration
MIN_K = 32  # an int8 tl.dot's reduction dimension on sm_90 (head_dim for Q.K^T, block_n for P.V)


@dataclass(frozen=True)
class WCDecodeConfig:
    """Launch options of the two passes (see the module docstring); every variant computes the same values."""

    block_n: int = DEFAULT_BLOCK_N
    num_warps: int = 4
    num_stages: int = 2
    vec_table: bool = False
    scores: bool = False

    def __post_init__(self) -> None:
        check_launch("whole-config decode", self.block_n, self.num_warps, self.num_stages, MIN_K)  # P.V: K = keys


WC_DECODE_CONFIGS = {
    "base": WCDecodeConfig(),
    "n64v": WCDecodeConfig(vec_table=True),
    "n64w2s3v": WCDecodeConfig(num_warps=2, num_stages=3, vec_table=True),
    "n128w4s3v": WCDecodeConfig(block_n=128, num_stages=3, vec_table=True),
    "n64v_scores": WCDecodeConfig(vec_table=True, scores=True),
    "n64w2s3v_scores": WCDecodeConfig(num_warps=2, num_stages=3, vec_table=True, scores=True),
    "n128w4s3v_scores": WCDecodeConfig(block_n=128, num_stages=3, vec_table=True, scores=True),
    "n128w8s3v_scores": WCDecodeConfig(block_n=128, num_warps=8, num_stages=3, vec_table=True, scores=True),
    # The tiles that fixed the Linear-only kernel's register-bound occupancy (16 keys, 1 warp, 8 stages there:
    # paged_decode_triton); 32 keys is the least an int8 P.V allows. Not yet timed on a GPU.
    "n32w1s8v_scores": WCDecodeConfig(block_n=32, num_warps=1, num_stages=8, vec_table=True, scores=True),
    "n32w2s6v_scores": WCDecodeConfig(block_n=32, num_warps=2, num_stages=6, vec_table=True, scores=True),
    "n64w1s6v_scores": WCDecodeConfig(block_n=64, num_warps=1, num_stages=6, vec_table=True, scores=True),
}
DEFAULT_WC_DECODE_CONFIG = "n128w4s3v_scores"  # 0.205 vs base 0.247 ms at B 256, 0.382 vs 0.472 at 512 (H100)


def wc_decode_config(config: Union[str, WCDecodeConfig, None]) -> WCDecodeConfig:
    if isinstance(config, WCDecodeConfig):
        return config
    name = DEFAULT_WC_DECODE_CONFIG if config is None else config
    if name not in WC_DECODE_CONFIGS:
        raise UserError(f"unknown whole-config decode config {name!r}; choose from {', '.join(WC_DECODE_CONFIGS)}")
    return WC_DECODE_CONFIGS[name]


@triton.jit
def _fq16(x, scale, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 x -> fake_quant(x, scale, 16 bits) rounded to DT, back in fp32."""
    r = _rint(_div_by(x, scale, INTERPRET), INTERPRET)
    return (tl.minimum(tl.maximum(r, -32767.0), 32767.0) * scale).to(DT).to(tl.float32)


@triton.jit
def _scores(q8, k_cache_ptr, kv_off, n_mask, coef, sm_scale, s_mask,
            HAS_MASK_Q: tl.constexpr, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """q8 [BLOCK_G, D] int8 against one tile of cached keys -> S [BLOCK_G, BLOCK_N] fp32 (-inf past the context)."""
    k8 = tl.load(k_cache_ptr + kv_off, mask=n_mask[:, None], other=0)  # [BLOCK_N, D] int8
    dot = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32)  # [BLOCK_G, BLOCK_N], exact
    s = (dot.to(tl.float32) * coef).to(DT).to(tl.float32)  # qd . kd, rounded as matmul_qkt's output
    s = (s * sm_scale).to(DT).to(tl.float32)
    if HAS_MASK_Q:
        s = _fq16(s, s_mask, DT, INTERPRET)
    return tl.where(n_mask[None, :], s, float("-inf"))


@triton.jit
def _tile_offsets(block_tables_ptr, seq, stride_bt, start, ctx_len, kv_head, stride_cs, stride_ch,
                  BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, VEC_TABLE: tl.constexpr):
    """(cache offsets [BLOCK_N, D] of the tile's rows for this KV head, mask [BLOCK_N] of positions < ctx_len).
    VEC_TABLE (BLOCK_N a multiple of BLOCK_SIZE): one table entry per cache block, broadcast over its rows."""
    slot, n_mask = tile_slots(block_tables_ptr + seq * stride_bt, start, ctx_len, BLOCK_SIZE, BLOCK_N, VEC_TABLE)
    return slot[:, None] * stride_cs + kv_head * stride_ch + tl.arange(0, HEAD_DIM)[None, :], n_mask


@triton.jit
def _stats_kernel(q_ptr, qs_ptr, k_cache_ptr, block_tables_ptr, context_lens_ptr, scales_ptr, m_ptr, l_ptr, s_buf_ptr,
                  sm_scale, s_mask, num_heads, n_cols, stride_qt, stride_qh, stride_cs, stride_ch, stride_bt,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  BLOCK_N: tl.constexpr, HAS_MASK_Q: tl.constexpr, DT: tl.constexpr, INTERPRET: tl.constexpr,
                  VEC_TABLE: tl.constexpr, SCORES: tl.constexpr):
    """Pass 1: the softmax max m and denominator l of every head of the group: m, l [B, H] fp32; SCORES: the
    scores too, into s_buf [B, H, n_cols] (DT)."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx_len = tl.load(context_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    q8 = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + tl.arange(0, HEAD_DIM)[None, :],
                 mask=g_mask[:, None], other=0)  # [BLOCK_G, D] int8
    coef = tl.load(qs_ptr + seq) * tl.load(scales_ptr + kv_head)  # qs * s_k
    s_rows = s_buf_ptr + (seq.to(tl.int64) * num_heads + heads[:, None]) * n_cols  # [BLOCK_G, 1]
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    for start in tl.range(0, ctx_len, BLOCK_N):
        kv_off, n_mask = _tile_offsets(block_tables_ptr, seq, stride_bt, start, ctx_len, kv_head, stride_cs,
                                       stride_ch, BLOCK_SIZE, BLOCK_N, HEAD_DIM, VEC_TABLE)
        s = _scores(q8, k_cache_ptr, kv_off, n_mask, coef, sm_scale, s_mask, HAS_MASK_Q, DT, INTERPRET)
        if SCORES:  # exact in DT: every score was rounded to DT
            tl.store(s_rows + start + tl.arange(0, BLOCK_N)[None, :], s.to(DT), mask=g_mask[:, None])
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the first tile holds position 0
        l_i = l_i * _exp(m_i - m_new, INTERPRET) + tl.sum(_exp(s - m_new[:, None], INTERPRET), 1)
        m_i = m_new
    tl.store(m_ptr + seq * num_heads + heads, m_i, mask=g_mask)
    tl.store(l_ptr + seq * num_heads + heads, l_i, mask=g_mask)


@triton.jit
def _pv_kernel(q_ptr, qs_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, scales_ptr, m_ptr,
               l_ptr, s_buf_ptr, out_ptr, sm_scale, s_mask, s_out, num_heads, num_kv, n_cols, stride_qt, stride_qh,
               stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
               GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK_Q: tl.constexpr,
               HAS_OUT_Q: tl.constexpr, DT: tl.constexpr, INTERPRET: tl.constexpr, VEC_TABLE: tl.constexpr,
               SCORES: tl.constexpr):
    """Pass 2: P = exp(S - m) / l in DT, p8 = rne(P / ps), O = fq16((p8 . v8) * ps * s_v) for the group's heads;
    S recomputed from q8 and the K cache, or (SCORES) read from pass 1's s_buf."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx_len = tl.load(context_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_h = tl.arange(0, BLOCK_H)
    l_all = tl.load(l_ptr + seq * num_heads + offs_h, mask=offs_h < num_heads, other=float("inf"))  # [BLOCK_H]
    l_min = tl.min(l_all, 0)
    p_max = tl.div_rn(tl.zeros_like(l_min) + 1.0, l_min).to(DT).to(tl.float32)  # the sequence's largest P, in DT
    ps = tl.maximum(tl.div_rn(p_max, 127.0), _FP32_TINY)
    m_i = tl.load(m_ptr + seq * num_heads + heads, mask=g_mask, other=0.0)  # [BLOCK_G]
    l_i = tl.load(l_ptr + seq * num_heads + heads, mask=g_mask, other=1.0)
    if not SCORES:
        q8 = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                     mask=g_mask[:, None], other=0)  # [BLOCK_G, D] int8
        coef = tl.load(qs_ptr + seq) * tl.load(scales_ptr + kv_head)
    s_rows = s_buf_ptr + (seq.to(tl.int64) * num_heads + heads[:, None]) * n_cols  # [BLOCK_G, 1]
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.int32)
    for start in tl.range(0, ctx_len, BLOCK_N):
        kv_off, n_mask = _tile_offsets(block_tables_ptr, seq, stride_bt, start, ctx_len, kv_head, stride_cs,
                                       stride_ch, BLOCK_SIZE, BLOCK_N, HEAD_DIM, VEC_TABLE)
        if SCORES:
            # masked along keys: unmasked, the loads become async copies through shared memory, measured slower
            # (1.935 against 1.847 ms a decode step, H100); pass 1's unmasked store is the faster one
            s = tl.load(s_rows + start + tl.arange(0, BLOCK_N)[None, :], mask=g_mask[:, None] & n_mask[None, :],
                        other=float("-inf")).to(tl.float32)
        else:
            s = _scores(q8, k_cache_ptr, kv_off, n_mask, coef, sm_scale, s_mask, HAS_MASK_Q, DT, INTERPRET)
        p = _div_by(_exp(s - m_i[:, None], INTERPRET), l_i[:, None], INTERPRET).to(DT).to(tl.float32)  # softmax in DT
        p8 = tl.minimum(_rint(_div_by(p, ps, INTERPRET), INTERPRET), 127.0).to(tl.int8)  # P >= 0: only the top clamps
        v8 = tl.load(v_cache_ptr + kv_off, mask=n_mask[:, None], other=0)  # [BLOCK_N, D] int8
        acc += tl.dot(p8, v8, out_dtype=tl.int32)
    o = (acc.to(tl.float32) * (ps * tl.load(scales_ptr + num_kv + kv_head))).to(DT).to(tl.float32)
    if HAS_OUT_Q:
        o = _fq16(o, s_out, DT, INTERPRET)
    tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])


def decode_q8(q8: torch.Tensor, qs: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              block_tables: torch.Tensor, context_lens: torch.Tensor, sm_scale: float, block_size: int,
              kv_scales: torch.Tensor, s_mask: Optional[float], s_out: Optional[float], out_dtype: torch.dtype,
              block_n: Optional[int] = None, config: Union[str, WCDecodeConfig, None] = None) -> torch.Tensor:
    """q8 [B, H, D] int8, qs [B] fp32; caches [S, KV, D] int8 (row stride D); block_tables [B, W] int32;
    context_lens [B] int32 (>= 1, <= W * block_size); kv_scales [2, KV] fp32 -> [B, H, D] out_dtype. s_mask /
    s_out: the 16-bit static scales of add_mask and matmul_pv's output (None: that quantizer is absent).
    config: a WC_DECODE_CONFIGS name or a WCDecodeConfig (default DEFAULT_WC_DECODE_CONFIG); block_n overrides
    its tile size."""
    check_inputs(q8, qs, k_cache, v_cache, block_tables, context_lens, kv_scales, out_dtype)
    cfg = wc_decode_config(config)
    if block_n is not None:
        cfg = WCDecodeConfig(block_n, cfg.num_warps, cfg.num_stages, cfg.vec_table, cfg.scores)
    if k_cache.stride(2) != 1 or q8.stride(2) != 1:
        raise UserError("whole-config decode: q8 and the caches need contiguous head_dim rows")
    b, h, d = q8.shape
    if d < MIN_K or d & (d - 1):  # Q.K^T reduces over head_dim; the interpreter would accept any, a GPU does not
        raise UserError(f"whole-config decode: head_dim must be a power of 2 >= {MIN_K} (int8 tl.dot), got {d}")
    kv = k_cache.shape[1]
    group = h // kv
    vec_table = cfg.vec_table and cfg.block_n % block_size == 0
    ml = torch.empty(2, b, h, dtype=torch.float32, device=q8.device)  # [0]: softmax max m, [1]: denominator l
    n_cols = triton.cdiv(block_tables.shape[1] * block_size, cfg.block_n) * cfg.block_n  # whole tiles: graph-safe
    s_buf = torch.empty((b, h, n_cols) if cfg.scores else (1,), dtype=out_dtype, device=q8.device)
    out = torch.empty(b, h, d, dtype=out_dtype, device=q8.device)
    kv_scales = kv_scales.contiguous()
    common = dict(GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_SIZE=block_size,
                  BLOCK_N=cfg.block_n, HAS_MASK_Q=s_mask is not None, DT=_TL_DTYPE[out_dtype], INTERPRET=_INTERPRET,
                  VEC_TABLE=vec_table, SCORES=cfg.scores, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    mask_scale = 1.0 if s_mask is None else float(s_mask)
    launch(_stats_kernel, (b, kv),
        q8, qs, k_cache, block_tables, context_lens, kv_scales, ml[0], ml[1], s_buf, float(sm_scale), mask_scale,
        h, n_cols, q8.stride(0), q8.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        **common)
    launch(_pv_kernel, (b, kv),
        q8, qs, k_cache, v_cache, block_tables, context_lens, kv_scales, ml[0], ml[1], s_buf, out, float(sm_scale),
        mask_scale, 1.0 if s_out is None else float(s_out), h, kv, n_cols,
        q8.stride(0), q8.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1), BLOCK_H=triton.next_power_of_2(h), HAS_OUT_Q=s_out is not None, **common)
    return out
