"""Prefill attention of the whole-config int8 mode (w8a8_npm_v1_3_4, spec steps 6-10), the torch reference.

Contract: `prefill_q8_torch` computes, chunk by chunk, exactly what simulate computes for one sequence
(`--quant-mode simulate --quant-per-sample-scale`: llama_slots.attention_forward through the YAML's
matmul_qkt / add_mask / matmul_pv destinations): Q per token across all heads (given as q8, qs), K and V
int8 per tensor (the 8-bit cache), scores 16-bit static (s_mask), P int8 per token across all heads and
keys, the output 16-bit static (s_out). Torch only, so the CPU engine path needs no Triton; the kernels
in whole_config_prefill_triton.py are tested against it.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from mlperf_llama2.engine.kv_cache import dequantize
from mlperf_llama2.quant.fake_quant import Numerics, fake_quant, qrange, round_ints

log = logging.getLogger(__name__)

_NUMERICS = Numerics(batch_shared_scale=False)  # per-sample scales: one sequence at a time


def fq_static(x: torch.Tensor, scale: Optional[float], bits: int) -> torch.Tensor:
    """A static symmetric quantizer with its fp32 scale (None: absent), as fake_quant rounds: in x's dtype."""
    if scale is None:
        return x
    qmin, qmax = qrange(bits, True, _NUMERICS.narrow_range)
    s = torch.full((), float(scale), dtype=torch.float32, device=x.device)
    return (round_ints(x.float() / s, _NUMERICS.rounding).clamp(qmin, qmax) * s).to(x.dtype)


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """x: [KV, L, D] -> [KV * groups, L, D], each KV head repeated for its query heads (as repeat_kv)."""
    kv, n, d = x.shape
    return x[:, None].expand(kv, groups, n, d).reshape(kv * groups, n, d)


def _chunk(qd: torch.Tensor, kd: torch.Tensor, vd: torch.Tensor, sm_scale: float, s_mask: Optional[float],
           s_out: Optional[float]) -> torch.Tensor:
    """One chunk in the model dtype. qd: [Lq, H, D]; kd, vd: [Lk, KV, D]; queries are the last Lq keys."""
    lq, h, _ = qd.shape
    lk, kv, _ = kd.shape
    q = qd.transpose(0, 1)[None]  # [1, H, Lq, D]
    k = _repeat_heads(kd.transpose(0, 1), h // kv)[None]  # [1, H, Lk, D]
    v = _repeat_heads(vd.transpose(0, 1), h // kv)[None]  # [1, H, Lk, D]
    scores = torch.matmul(q, k.transpose(2, 3)) * sm_scale  # [1, H, Lq, Lk], dt
    scores = fq_static(scores, s_mask, 16)
    keep = torch.ones(lq, lk, dtype=torch.bool, device=qd.device).tril(diagonal=lk - lq)  # [Lq, Lk]
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qd.dtype)  # [1, H, Lq, Lk]
    lo = probs.amin(dim=(1, 3), keepdim=True)  # [1, 1, Lq, 1]: per token, across heads and keys
    hi = probs.amax(dim=(1, 3), keepdim=True)
    probs = fake_quant(probs, lo, hi, 8, True, _NUMERICS)
    out = fq_static(torch.matmul(probs, v), s_out, 16)  # [1, H, Lq, D]
    return out[0].transpose(0, 1)  # [Lq, H, D]


def prefill_q8_torch(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                     sm_scale: float, kv_scales: torch.Tensor, s_mask: Optional[float], s_out: Optional[float],
                     out_dtype: torch.dtype) -> torch.Tensor:
    """q8: [Tq, H, D] int8, qs: [Tq] fp32 (per token across heads); k8, v8: [Tk, KV, D] int8, chunk i's whole
    context at rows cu_seqlens_k[i]:cu_seqlens_k[i + 1]; kv_scales: [2, KV] fp32. -> [Tq, H, D] out_dtype.
    max_seqlen_q / _k are unused here (same signature as the kernel)."""
    qd = (q8.float() * qs[:, None, None].float()).to(out_dtype)  # [Tq, H, D]
    kd = dequantize(k8, kv_scales[0], out_dtype)  # [Tk, KV, D]
    vd = dequantize(v8, kv_scales[1], out_dtype)
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = [_chunk(qd[bq[i]:bq[i + 1]], kd[bk[i]:bk[i + 1]], vd[bk[i]:bk[i + 1]], sm_scale, s_mask, s_out)
            for i in range(len(bq) - 1)]
    return torch.cat(outs) if outs else qd.new_empty(qd.shape)
