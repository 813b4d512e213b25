"""GQA-aware paged decode attention in Triton: one query token per sequence over its cached context.

One program handles one (sequence, key/value head) pair and all query heads of that group, so each
cached key/value row is read from memory once per group. Keys are read block by block through the
sequence's block table with an online softmax in fp32. Graph-safe: the context length is read on
the device, so a captured graph replays with any lengths. An 8-bit cache (int8 or fp8 E4M3, with
`kv_scales [2, KV]`, kv_cache.py) is read as is: each key/value row converts exactly to the query's
dtype, the head's K scale multiplies the scores and its V scale the output, so no 16-bit copy of
the cache is ever made.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, scales_ptr,
    scale_log2e, num_kv,
    stride_qt, stride_qh, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, QUANT: tl.constexpr,
):
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


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           block_size: int, block_n: int = 64, num_warps: int = 4,
                           kv_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q: [B, H, D]; caches: [S, KV, D] (model dtype, or 8-bit with kv_scales [2, KV] float32 contiguous);
    block_tables: [B, W] int32; context_lens: [B] int32 -> [B, H, D]."""
    b, h, d = q.shape
    kv = k_cache.shape[1]
    group = h // kv
    out = torch.empty_like(q)
    _paged_decode_kernel[(b, kv)](
        q, k_cache, v_cache, block_tables, context_lens, out, q if kv_scales is None else kv_scales,
        scale * 1.4426950408889634, kv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, IEEE=q.dtype == torch.float32,
        QUANT=kv_scales is not None, num_warps=num_warps, num_stages=2,
    )
    return out
