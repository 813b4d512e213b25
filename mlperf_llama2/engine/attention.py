"""Attention over the paged KV cache (new keys/values already stored by `ops.rope_store`): prefill and decode.

The cache of one layer is `k_cache, v_cache: [num_slots, num_kv_heads, head_dim]` (slot = block *
block_size + offset). A step's tokens are flattened, decodes first: the first `num_decodes` rows
each attend to their whole context through the block table (a Triton kernel on CUDA, a gather plus
SDPA on CPU); the remaining rows are prefill chunks that attend causally to their cached prefix and
themselves (FlashAttention varlen on CUDA in fp16/bf16, SDPA per sequence otherwise). GQA is handled inside the
kernels: key/value heads are never repeated in memory. An 8-bit cache (`kv_scales` [2, KV], the
layer's K and V scales, kv_cache.py) is read by the decode kernel as is; the CPU paths and a prefill
with a cached prefix dequantize only the rows they gather, for that step.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from mlperf_llama2.engine.kv_cache import dequantize, gather

log = logging.getLogger(__name__)

try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
    _VARLEN_GQA = "enable_gqa" in inspect.signature(_varlen_attn).parameters
except ImportError:  # older torch: SDPA per sequence
    _varlen_attn = None
    _VARLEN_GQA = False


def _flash_forward_op():
    """aten's FlashAttention forward, where it takes a causal window (what varlen_attn calls on CUDA): the prefill
    calls it directly. varlen_attn is a torch.library custom op, and its dispatch cost ~115 us of host time a call
    (cProfile of an eager 80-layer step, H100 machine: 9.3 of 143 ms), for the same kernel with the same arguments
    (FlashAttention takes fewer key/value heads than query heads as they are: varlen_attn passes enable_gqa only to
    its cuDNN path). None where the op or its window arguments are missing: varlen_attn then."""
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    try:
        names = {a.name for a in op.default._schema.arguments}
    except (AttributeError, RuntimeError):
        return None
    return op if {"window_size_left", "window_size_right", "scale"} <= names else None


_flash_forward = _flash_forward_op() if _varlen_attn is not None else None


@dataclass
class AttentionMetadata:
    """Everything attention needs about one step's flattened tokens (tensors on the model's device)."""

    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    num_decodes: int
    block_size: int
    # decode rows [0, num_decodes)
    block_tables: Optional[torch.Tensor] = None  # [num_decodes, max_blocks] int32
    context_lens: Optional[torch.Tensor] = None  # [num_decodes] int32, new token included
    # prefill rows [num_decodes, T)
    cu_seqlens_q: Optional[torch.Tensor] = None  # [P + 1] int32
    cu_seqlens_k: Optional[torch.Tensor] = None  # [P + 1] int32
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    context_slots: Optional[torch.Tensor] = None  # [sum k] int64: slots of each prefill's whole context; None: no prefix
    prefill_q_lens: tuple[int, ...] = ()  # host copies, CPU path
    prefill_k_lens: tuple[int, ...] = ()
    decode_context_slots: Optional[torch.Tensor] = None  # [sum ctx] int64, CPU decode path only
    decode_context_lens: tuple[int, ...] = ()
    # a flat step on CUDA (every token a decode row, model_runner._flat_rows): [T, 3] int32 groups of consecutive
    # rows of one sequence (flat_rows.row_groups), which `paged_rows_attention` reads together
    row_groups: Optional[torch.Tensor] = None

    @classmethod
    def single_prefill(cls, t: int, device) -> "AttentionMetadata":
        """One sequence of t tokens, no cached prefix, in slots 0..t-1 of a scratch cache (calibration passes)."""
        cu = torch.tensor([0, t], dtype=torch.int32, device=device)
        return cls(slot_mapping=torch.arange(t, device=device), num_decodes=0, block_size=t, cu_seqlens_q=cu,
                   cu_seqlens_k=cu, max_seqlen_q=t, max_seqlen_k=t, prefill_q_lens=(t,), prefill_k_lens=(t,))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              meta: AttentionMetadata, scale: float, kv_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KV, D] (already stored in the cache; dequantized if it is 8-bit, then
    kv_scales: [2, KV] float32). Returns [T, H, D]."""
    nd = meta.num_decodes
    if nd == q.shape[0]:
        return _decode(q, k_cache, v_cache, meta, scale, kv_scales)
    if nd == 0:
        return _prefill(q, k, v, k_cache, v_cache, meta, scale, kv_scales)
    return torch.cat([
        _decode(q[:nd], k_cache, v_cache, meta, scale, kv_scales),
        _prefill(q[nd:], k[nd:], v[nd:], k_cache, v_cache, meta, scale, kv_scales),
    ])


def _gathered(rows: torch.Tensor, kv_scales: Optional[torch.Tensor], which: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows gathered from a cache ([N, KV, D]) as attention reads them: dequantized when the cache is 8-bit."""
    return rows if kv_scales is None else dequantize(rows, kv_scales[which], dtype)


def _decode(q, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales=None) -> torch.Tensor:
    if q.is_cuda and meta.row_groups is not None:
        from mlperf_llama2.engine.paged_decode_triton import paged_rows_attention

        return paged_rows_attention(q, k_cache, v_cache, meta.block_tables, meta.row_groups, scale, meta.block_size,
                                    kv_scales=kv_scales)
    if q.is_cuda:
        from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                                      meta.block_size, kv_scales=kv_scales)
    # CPU: gather each sequence's context from its blocks, then SDPA (one query row per sequence).
    k_all = gather(k_cache, meta.decode_context_slots)
    v_all = gather(v_cache, meta.decode_context_slots)
    outs, start = [], 0
    for i, n in enumerate(meta.decode_context_lens):
        k = _gathered(k_all[start:start + n], kv_scales, 0, q.dtype)
        v = _gathered(v_all[start:start + n], kv_scales, 1, q.dtype)
        outs.append(_sdpa(q[i:i + 1], k, v, scale, causal=False))
        start += n
    return torch.cat(outs)


def _prefill(q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales=None) -> torch.Tensor:
    if meta.context_slots is not None:  # some chunk has a cached prefix: attend to the whole context
        k = _gathered(gather(k_cache, meta.context_slots), kv_scales, 0, q.dtype)
        v = _gathered(gather(v_cache, meta.context_slots), kv_scales, 1, q.dtype)
    if q.is_cuda and _flash_forward is not None and q.dtype in (torch.float16, torch.bfloat16):
        # window (-1, 0) = causal, aligned to the end of the keys (queries are the last q_len of k_len)
        return _flash_forward(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k,
                              0.0, False, False, scale=scale, window_size_left=-1, window_size_right=0)[0]
    if q.is_cuda and _varlen_attn is not None and q.dtype in (torch.float16, torch.bfloat16):
        extra = {"enable_gqa": True} if _VARLEN_GQA else {}
        # window (-1, 0) = causal, aligned to the end of the keys (queries are the last q_len of k_len)
        return _varlen_attn(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k,
                            scale=scale, window_size=(-1, 0), **extra)
    outs, qs, ks = [], 0, 0
    for q_len, k_len in zip(meta.prefill_q_lens, meta.prefill_k_lens):
        outs.append(_sdpa(q[qs:qs + q_len], k[ks:ks + k_len], v[ks:ks + k_len], scale, causal=True))
        qs += q_len
        ks += k_len
    return torch.cat(outs)


def _sdpa(q, k, v, scale: float, causal: bool) -> torch.Tensor:
    """One sequence. q: [Lq, H, D]; k, v: [Lk, KV, D]; the queries are the last Lq positions of Lk."""
    lq, lk = q.shape[0], k.shape[0]
    mask = None
    if causal and lq > 1:
        # query i sits at key position lk - lq + i and sees keys up to it
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )  # [H, Lq, D]
    return out.transpose(0, 1)
