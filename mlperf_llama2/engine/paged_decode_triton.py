"""GQA-aware paged decode attention in Triton: one query token per sequence over its cached context.

One program handles one (sequence, key/value head) pair and all query heads of that group, so each
cached key/value row is read from memory once per group. Keys are read block by block through the
sequence's block table with an online softmax in fp32. Graph-safe: the context length is read on
the device, so a captured graph replays with any lengths. An 8-bit cache (int8 or fp8 E4M3, with
`kv_scales [2, KV]`, kv_cache.py) is read as is: each key/value row converts exactly to the query's
dtype, the head's K scale multiplies the scores and its V scale the output, so no 16-bit copy of
the cache is ever made.

`DECODE_CONFIGS` names the variants (the original kernel `base`; bigger tiles with pipelining, a
vectorised block-table read, an exact int8 -> fp16 bit trick, and a split of the context over several
programs merged by a second kernel, flash-decoding style). `tools/bench_kv_decode.py` times them all;
`DEFAULT_DECODE_CONFIG_*` pick the one the engine runs. Every variant keeps the graph-capture contract:
a fixed grid per batch size, context lengths read on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from mlperf_llama2.engine import pdl
from mlperf_llama2.engine.flat_rows import ROWS_PER_PROGRAM
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.pdl_triton import pdl_enter
from mlperf_llama2.errors import UserError


def check_launch(what: str, block_n: int, num_warps: int, num_stages: int, min_block_n: int = 16) -> None:
    """A decode kernel's launch options: powers of 2, tiles of at least min_block_n keys (tl.dot: 16, or 32 where
    the tile is an int8 dot's reduction dimension), at least one stage."""
    for name, value in (("block_n", block_n), ("num_warps", num_warps)):
        if value < 1 or value & (value - 1):
            raise UserError(f"{what}: {name} must be a power of 2 >= 1, got {value}")
    if num_stages < 1:
        raise UserError(f"{what}: num_stages must be >= 1, got {num_stages}")
    if block_n < min_block_n:
        raise UserError(f"{what}: block_n must be >= {min_block_n} (tl.dot), got {block_n}")


@dataclass(frozen=True)
class DecodeKernelConfig:
    """One variant of the decode kernel. `base` is the original kernel; the others run `_paged_decode_split_kernel`.

    block_n: tokens per loop iteration; num_warps / num_stages: Triton launch options; splits: programs per
    (sequence, KV head) over the context (flash-decoding; 1 = none, 0 = chosen from the batch so the grid
    covers the SMs twice; else a power of 2), merged by `_merge_splits_kernel`; vec_table: read one
    block-table entry per cache block of an iteration (BLOCK_N // block_size loads) instead of one per token;
    int8_magic: an int8 cache with fp16 queries converts by bits (0x6480 + x is the fp16 1152 + x, exactly)
    instead of an integer-to-float conversion, which runs at a fraction of the ALU rate.
    """

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    splits: int = 1
    vec_table: bool = False
    int8_magic: bool = False
    base: bool = False

    def __post_init__(self) -> None:
        check_launch("decode kernel config", self.block_n, self.num_warps, self.num_stages)
        if self.splits < 0 or self.splits & (self.splits - 1):
            raise UserError(f"decode kernel config: splits must be 0 (auto) or a power of 2, got {self.splits}")
        if self.base and (self.splits != 1 or self.vec_table or self.int8_magic):
            raise UserError("decode kernel config: the base kernel has no splits, vec_table or int8_magic")


# Variants the benchmark times (tools/bench_kv_decode.py --configs NAME,...). The 64-token base kernel is the
# measured one; bigger tiles keep more loads in flight per program, stages pipeline them, splits add programs.
DECODE_CONFIGS = {
    "base": DecodeKernelConfig(base=True),
    "n64v": DecodeKernelConfig(block_n=64, vec_table=True),
    "n128w4s3v": DecodeKernelConfig(block_n=128, num_warps=4, num_stages=3, vec_table=True),
    "n128w8s3v": DecodeKernelConfig(block_n=128, num_warps=8, num_stages=3, vec_table=True),
    "n256w8s2v": DecodeKernelConfig(block_n=256, num_warps=8, num_stages=2, vec_table=True),
    "n128w4s3": DecodeKernelConfig(block_n=128, num_warps=4, num_stages=3),
    "n128w4s3vm": DecodeKernelConfig(block_n=128, num_warps=4, num_stages=3, vec_table=True, int8_magic=True),
    "n128w4s4vm": DecodeKernelConfig(block_n=128, num_warps=4, num_stages=4, vec_table=True, int8_magic=True),
    "n64w4s3vm": DecodeKernelConfig(block_n=64, num_warps=4, num_stages=3, vec_table=True, int8_magic=True),
    "n64w2s3vm": DecodeKernelConfig(block_n=64, num_warps=2, num_stages=3, vec_table=True, int8_magic=True),
    "n256w8s2vm": DecodeKernelConfig(block_n=256, num_warps=8, num_stages=2, vec_table=True, int8_magic=True),
    "n64w4s4v": DecodeKernelConfig(block_n=64, num_warps=4, num_stages=4, vec_table=True),
    # Smaller key tiles, more stages: the 64-key 2-warp kernel is register-bound at 4 programs (8 warps) an SM,
    # 12.5% occupancy, 65% of DRAM bandwidth over an fp8 cache (Nsight Compute, H100,
    # docs/results/ncu_paged_decode_h100.txt); 16 keys on one warp with 8 stages reads at 2.7-2.8 TB/s
    # (docs/results/bench_kv_decode_small_tiles_70b_h100.json)
    "n32w2s6vm": DecodeKernelConfig(block_n=32, num_warps=2, num_stages=6, vec_table=True, int8_magic=True),
    "n32w1s8vm": DecodeKernelConfig(block_n=32, num_warps=1, num_stages=8, vec_table=True, int8_magic=True),
    "n16w1s8vm": DecodeKernelConfig(block_n=16, num_warps=1, num_stages=8, vec_table=True, int8_magic=True),
    "n16w2s8vm": DecodeKernelConfig(block_n=16, num_warps=2, num_stages=8, vec_table=True, int8_magic=True),
    "n128w4s3v_split2": DecodeKernelConfig(block_n=128, num_stages=3, splits=2, vec_table=True),
    "n64w4s3v_split4": DecodeKernelConfig(block_n=64, num_stages=3, splits=4, vec_table=True),
    "n64w4s3v_auto": DecodeKernelConfig(block_n=64, num_stages=3, splits=0, vec_table=True),
}
# The variant `paged_decode_attention` runs when not told: edit after timing on the GPU (bench_kv_decode.py).
DEFAULT_DECODE_CONFIG_16BIT = "base"
# 8-bit: H100, 70B shapes, context 750 (2026-12-06): fp8 0.143 / 0.280 ms at B 256 / 512 against 0.161 / 0.313
# for the former n64w2s3vm, int8 0.147 / 0.283 against 0.176 / 0.340 (which was 13-20% faster than base)
DEFAULT_DECODE_CONFIG_8BIT = "n16w1s8vm"


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, scales_ptr,
    scale_log2e, num_kv,
    stride_qt, stride_qh, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, QUANT: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx_len = tl.load(context_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None], other=0.0)  # [BLOCK_G, D]
    qk_scale = scale_log2e
    if QUANT:  # scores = q . (k8 * k_scale) = (q . k8) * k_scale
        qk_scale = scale_log2e * tl.load(scales_ptr + kv_head)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for start in range(0, ctx_len, BLOCK_N):
        pos = start + offs_n
        n_mask = pos < ctx_len
        block = tl.load(block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=n_mask, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_off = slot[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=n_mask[:, None], other=0.0).to(q.dtype)  # [BLOCK_N, D]
        if IEEE:  # fp32 caches (tests): no tf32 rounding
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_G, BLOCK_N], log2 units
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + kv_off, mask=n_mask[:, None], other=0.0).to(q.dtype)  # [BLOCK_N, D]
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
        m_i = m_new
    if QUANT:  # sum p (v8 * v_scale) = v_scale * sum p v8
        acc = acc * tl.load(scales_ptr + num_kv + kv_head)
    out = acc / l_i[:, None]
    tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])


@triton.jit
def _load_rows(cache_ptr, kv_off, n_mask, DTYPE: tl.constexpr, MAGIC: tl.constexpr):
    """[BLOCK_N, D] cache rows in the compute dtype; MAGIC: int8 rows into fp16 by bits (exact)."""
    x = tl.load(cache_ptr + kv_off, mask=n_mask[:, None], other=0.0)
    if MAGIC:  # fp16 bits 0x6400 + n are 1024 + n for 0 <= n < 1024, so 0x6480 + x is 1152 + x
        return ((x.to(tl.int16) + 0x6480).to(tl.float16, bitcast=True) - 1152.0).to(tl.float16)
    return x.to(DTYPE)


@triton.jit
def _online_tile(q, qk_scale, k_cache_ptr, v_cache_ptr, kv_off, n_mask, keep, m_i, l_i, acc, MAGIC: tl.constexpr,
                 IEEE: tl.constexpr):
    """One tile of keys into the online softmax: scores q . k (log2 units), those outside `keep` ([BLOCK_G or 1,
    BLOCK_N]) at -inf, then the running max m_i, sum l_i and output acc updated with p . v."""
    k = _load_rows(k_cache_ptr, kv_off, n_mask, q.dtype, MAGIC)  # [BLOCK_N, D]
    if IEEE:  # fp32 caches (tests): no tf32 rounding
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    else:
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_G, BLOCK_N]
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_cache_ptr, kv_off, n_mask, q.dtype, MAGIC)  # [BLOCK_N, D]
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
    return m_new, l_i, acc


@triton.jit
def tile_slots(table, start, hi, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, VEC_TABLE: tl.constexpr):
    """Cache slots (int64 [BLOCK_N]) of positions start .. start + BLOCK_N through a sequence's block table, and
    the mask of those below hi. VEC_TABLE (BLOCK_N a multiple of BLOCK_SIZE): one table entry per cache block of
    the tile, broadcast over its rows; else one per position."""
    pos = start + tl.arange(0, BLOCK_N)
    n_mask = pos < hi
    if VEC_TABLE:
        offs_b = start // BLOCK_SIZE + tl.arange(0, BLOCK_N // BLOCK_SIZE)
        block = tl.load(table + offs_b, mask=offs_b * BLOCK_SIZE < hi, other=0).to(tl.int64)
        slot = tl.reshape(block[:, None] * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :], [BLOCK_N])
    else:
        block = tl.load(table + pos // BLOCK_SIZE, mask=n_mask, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
    return slot, n_mask


@triton.jit
def _paged_decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, part_ptr, ml_ptr, scales_ptr,
    scale_log2e, num_kv,
    stride_qt, stride_qh, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, VEC_TABLE: tl.constexpr, MAGIC: tl.constexpr,
    IEEE: tl.constexpr, QUANT: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_lens_ptr + seq)
    # each split covers whole BLOCK_N tiles, so a tile never straddles two splits; late splits may be empty
    chunk = tl.cdiv(tl.cdiv(ctx_len, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, ctx_len)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None], other=0.0)  # [BLOCK_G, D]
    qk_scale = scale_log2e
    if QUANT:
        qk_scale = scale_log2e * tl.load(scales_ptr + kv_head)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    for start in range(lo, hi, BLOCK_N):
        slot, n_mask = tile_slots(table, start, hi, BLOCK_SIZE, BLOCK_N, VEC_TABLE)
        kv_off = slot[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
        m_i, l_i, acc = _online_tile(q, qk_scale, k_cache_ptr, v_cache_ptr, kv_off, n_mask, n_mask[None, :], m_i,
                                     l_i, acc, MAGIC, IEEE)
    if QUANT:
        acc = acc * tl.load(scales_ptr + num_kv + kv_head)
    if SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:  # unnormalised partials: part [B, H, SPLITS, D], ml [2, B, H, SPLITS] (running max, sum)
        row = (seq * num_kv * GROUP + heads) * SPLITS + split  # [BLOCK_G]
        tl.store(part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_mask[:, None])
        total = tl.num_programs(0) * num_kv * GROUP * SPLITS
        tl.store(ml_ptr + row, m_i, mask=g_mask)
        tl.store(ml_ptr + total + row, l_i, mask=g_mask)


@triton.jit
def _merge_splits_kernel(part_ptr, ml_ptr, out_ptr, num_heads, stride_ot, stride_oh,
                         HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr = False):
    """out[b, h] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s; an empty split has m = -inf, weight 0."""
    pdl_enter(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    row = (seq * num_heads + head) * SPLITS + offs_s  # [SPLITS]
    total = tl.num_programs(0) * num_heads * SPLITS
    m = tl.load(ml_ptr + row)
    l = tl.load(ml_ptr + total + row)
    w = tl.exp2(m - tl.max(m, 0))  # [SPLITS]; split 0 is never empty (context >= 1), so the max is finite
    acc = tl.load(part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :])  # [SPLITS, D]
    out = tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


# Steps with prompt chunks through the graphs (--graph-mixed-tokens): consecutive rows of one sequence share a
# program of `_paged_rows_kernel` (flat_rows.row_groups, ROWS_PER_PROGRAM rows), so each cached key/value row is
# read once per group of prompt tokens instead of once per token, and the MMA tile holds ROWS x GROUP query rows
# (64 for Llama-2-70B's GQA 8). Keys a loop iteration: 32 over a 16-bit cache, 64 over an 8-bit one (the fastest
# of bench_kv_decode.py --flat's launch sweep at 70B's shapes on an H100, 64 + 128, 128 + 448, 64 + 448 and 2 x 1024
# rows: docs/results/verify_head_rows_hostprof_h100.txt)
ROWS_BLOCK_N, ROWS_BLOCK_N_8BIT, ROWS_NUM_WARPS, ROWS_NUM_STAGES = 32, 64, 4, 2


@triton.jit
def _paged_rows_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, groups_ptr, out_ptr, scales_ptr, scale_log2e, num_kv,
    stride_qt, stride_qh, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MAGIC: tl.constexpr, IEEE: tl.constexpr,
    QUANT: tl.constexpr,
):
    """Program (p, kv head): group p = (first row, rows, context of the first row); row r of the group is the
    token at context length ctx0 + r of one sequence (consecutive positions, one block table) and attends to
    keys 0 .. ctx0 + r - 1. A group of 0 rows does nothing (the grid has a program per row, groups fewer)."""
    grp = tl.program_id(0)
    kv_head = tl.program_id(1)
    row0 = tl.load(groups_ptr + grp * 3)
    count = tl.load(groups_ptr + grp * 3 + 1)
    ctx0 = tl.load(groups_ptr + grp * 3 + 2)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    r = offs_g // GROUP
    valid = (offs_g < ROWS * GROUP) & (r < count)
    rows = row0 + r
    heads = kv_head * GROUP + offs_g % GROUP
    ctx = ctx0 + r  # [BLOCK_G]: >= 1 for every row, so each row sees key 0 and its softmax stays finite
    hi = tl.where(count > 0, ctx0 + count - 1, 0)  # the last row's context: the keys the group reads
    q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=valid[:, None], other=0.0)  # [BLOCK_G, D]
    qk_scale = scale_log2e
    if QUANT:
        qk_scale = scale_log2e * tl.load(scales_ptr + kv_head)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + row0 * stride_bt
    for start in range(0, hi, BLOCK_N):
        slot, n_mask = tile_slots(table, start, hi, BLOCK_SIZE, BLOCK_N, False)
        kv_off = slot[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
        causal = n_mask[None, :] & ((start + tl.arange(0, BLOCK_N))[None, :] < ctx[:, None])  # each row its own
        m_i, l_i, acc = _online_tile(q, qk_scale, k_cache_ptr, v_cache_ptr, kv_off, n_mask, causal, m_i, l_i, acc,
                                     MAGIC, IEEE)
    if QUANT:
        acc = acc * tl.load(scales_ptr + num_kv + kv_head)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l_i >= 1 in every row a group holds; 0 only in unused ones
    tl.store(out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=valid[:, None])


def paged_rows_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                         groups: torch.Tensor, scale: float, block_size: int,
                         kv_scales: Optional[torch.Tensor] = None, rows: int = ROWS_PER_PROGRAM,
                         block_n: Optional[int] = None, num_warps: int = ROWS_NUM_WARPS,
                         num_stages: int = ROWS_NUM_STAGES) -> torch.Tensor:
    """Attention of T rows, each one token over its sequence's cache up to itself, in groups of consecutive rows
    of one sequence (`flat_rows.row_groups`). q: [T, H, D]; caches as `paged_decode_attention`'s; block_tables
    [T, W] int32 (row i's sequence's table); groups [T, 3] int32. Graph-safe (a fixed grid of T x KV programs).
    Rows no group covers are left unset. `rows` must be the groups' size bound; block_n / num_warps / num_stages:
    the launch (tools/bench_kv_decode.py --flat times others; block_n None: by the cache's width)."""
    if block_n is None:
        block_n = ROWS_BLOCK_N_8BIT if k_cache.element_size() == 1 else ROWS_BLOCK_N
    check_launch("paged_rows_attention", block_n, num_warps, num_stages)
    t, h, d = q.shape
    kv = k_cache.shape[1]
    group = h // kv
    if groups.shape != (t, 3) or groups.dtype != torch.int32:
        raise UserError(f"paged_rows_attention: groups must be int32 [{t}, 3], got {groups.dtype} "
                        f"{list(groups.shape)}")
    out = torch.empty_like(q)
    if t == 0:
        return out
    magic = k_cache.dtype == torch.int8 and q.dtype == torch.float16
    launch(_paged_rows_kernel, (t, kv),
        q, k_cache, v_cache, block_tables, groups, out, q if kv_scales is None else kv_scales,
        scale * 1.4426950408889634, kv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, ROWS=rows, BLOCK_G=max(16, triton.next_power_of_2(rows * group)), HEAD_DIM=d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, MAGIC=magic, IEEE=q.dtype == torch.float32,
        QUANT=kv_scales is not None, num_warps=num_warps, num_stages=num_stages,
    )
    return out


def decode_config(name: str) -> DecodeKernelConfig:
    """The named variant, or a UserError listing the names."""
    if name not in DECODE_CONFIGS:
        raise UserError(f"unknown decode kernel config {name!r}; choose from {', '.join(DECODE_CONFIGS)}")
    return DECODE_CONFIGS[name]


def auto_splits(programs: int, device: torch.device, max_splits: int = 16) -> int:
    """Splits per (sequence, KV head) so the grid holds about two programs per SM (a power of 2, <= max_splits)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return min(max_splits, triton.next_power_of_2(max(1, -(-2 * sms // programs))))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           block_size: int, block_n: Optional[int] = None, num_warps: Optional[int] = None,
                           kv_scales: Optional[torch.Tensor] = None,
                           config: Union[str, DecodeKernelConfig, None] = None) -> torch.Tensor:
    """q: [B, H, D]; caches: [S, KV, D] (model dtype, or 8-bit with kv_scales [2, KV] float32 contiguous);
    block_tables: [B, W] int32; context_lens: [B] int32 -> [B, H, D]. `config`: a DECODE_CONFIGS name or a
    DecodeKernelConfig (default: DEFAULT_DECODE_CONFIG_8BIT or _16BIT); block_n / num_warps override it."""
    if config is None:
        config = DEFAULT_DECODE_CONFIG_16BIT if kv_scales is None else DEFAULT_DECODE_CONFIG_8BIT
    cfg = decode_config(config) if isinstance(config, str) else config
    if block_n is not None or num_warps is not None:
        cfg = replace(cfg, block_n=block_n or cfg.block_n, num_warps=num_warps or cfg.num_warps)
    if cfg.base:
        return _base_decode(q, k_cache, v_cache, block_tables, context_lens, scale, block_size, cfg, kv_scales)
    b, h, d = q.shape
    kv = k_cache.shape[1]
    group = h // kv
    splits = cfg.splits or auto_splits(b * kv, q.device)
    vec = cfg.vec_table and cfg.block_n % block_size == 0 and block_size & (block_size - 1) == 0
    magic = cfg.int8_magic and k_cache.dtype == torch.int8 and q.dtype == torch.float16
    out = torch.empty_like(q)
    part = ml = out
    if splits > 1:  # graph-safe: the workspace's shape depends on the batch size only
        part = torch.empty(b, h, splits, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(2, b, h, splits, dtype=torch.float32, device=q.device)
    launch(_paged_decode_split_kernel, (b, kv, splits),
        q, k_cache, v_cache, block_tables, context_lens, out, part, ml, q if kv_scales is None else kv_scales,
        scale * 1.4426950408889634, kv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_SIZE=block_size,
        BLOCK_N=cfg.block_n, SPLITS=splits, VEC_TABLE=vec, MAGIC=magic, IEEE=q.dtype == torch.float32,
        QUANT=kv_scales is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages, PDL=pdl.enabled(),
        **pdl.launch_options(),
    )
    if splits > 1:
        launch(_merge_splits_kernel, (b, h), part, ml, out, h, out.stride(0), out.stride(1), HEAD_DIM=d,
               SPLITS=splits, num_warps=4, PDL=pdl.enabled(), **pdl.launch_options())
    return out


def _base_decode(q, k_cache, v_cache, block_tables, context_lens, scale: float, block_size: int,
                 cfg: DecodeKernelConfig, kv_scales: Optional[torch.Tensor]) -> torch.Tensor:
    """The original kernel: one program per (sequence, KV head), one table entry read per token."""
    b, h, d = q.shape
    kv = k_cache.shape[1]
    group = h // kv
    out = torch.empty_like(q)
    launch(_paged_decode_kernel, (b, kv),
        q, k_cache, v_cache, block_tables, context_lens, out, q if kv_scales is None else kv_scales,
        scale * 1.4426950408889634, kv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d,
        BLOCK_SIZE=block_size, BLOCK_N=cfg.block_n, IEEE=q.dtype == torch.float32,
        QUANT=kv_scales is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages, PDL=pdl.enabled(),
        **pdl.launch_options(),
    )
    return out
