"""Prefill attention of the whole-config int8 mode (spec steps 6-10) in Triton: int8 Q, K, V, P in, 16-bit out.

Contract: `prefill_q8` equals `whole_config_prefill.prefill_q8_torch` (simulate's numerics per sequence) up to
where the two sum in a different order: the scores are int32 dots q8 . k8 times qs * s_k * sm_scale in fp32,
rounded to the output dtype, then 16-bit quantized with s_mask; P is int8 per token across all heads and keys,
whose scale ps[t] = (1 / min_h l[t, h], rounded to the dtype) / 127 needs every head's softmax denominator l
first. Hence two passes, each one program per (chunk, query block, KV head) over the head's GQA group:
pass 1 runs a flash-attention loop over key blocks for m (row max) and l; pass 2 reduces l over the heads
into ps, recomputes the same scores, quantizes P = exp(S - m) / l to p8 and accumulates p8 . v8 exactly in
int32 (or, with int_dot=False, fp32 dots of the same integers), then scales by ps * s_v and applies the
16-bit output quantizer s_out. Queries are the last q_len of a chunk's k_len keys, causal. Heads are padded
to BLOCK_D >= 32 with zeros, so the int8 dots always have the shapes tl.dot needs (int8 MMA on sm_90: K >= 32;
the interpreter accepts any, so CPU tests use the GPU's shapes too).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import triton
import triton.language as tl

from mlperf_llama2.engine.fused_triton import _INTERPRET, _div_by, _exp, _rint
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.engine.whole_config_prefill import prefill_q8_torch  # noqa: F401  (the reference, re-exported)
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

_Q16 = tl.constexpr(32767.0)  # 16-bit narrow range
_Q8 = tl.constexpr(127.0)
_MIN_K = 32  # an int8 tl.dot's reduction dimension on sm_90 (BLOCK_D for Q.K^T, BLOCK_N for P.V)
_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _round(x, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 x rounded to DT (nearest, ties to even), kept in fp32. The interpreter truncates fp32 -> bf16,
    so there the rounding is done on the bits (x finite or infinite, never NaN here)."""
    if INTERPRET and DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(DT).to(tl.float32)


@triton.jit
def _fq16(x, scale, DT: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 x already rounded to DT -> fq(x, scale, 16) rounded to DT, back in fp32 (clamping first keeps the
    interpreter's rounding trick in range and changes nothing: the bounds are integers)."""
    r = tl.minimum(tl.maximum(_div_by(x, scale, INTERPRET), -_Q16), _Q16)
    return _round(_rint(r, INTERPRET) * scale, DT, INTERPRET)


@triton.jit
def _scores(q8, k8_ptr, k_row0, k_start, k_len, q_pos, stride_kt, kv_off, offs_d, d_mask, qk_scale, s_mask,
            BLOCK_N: tl.constexpr, INT_DOT: tl.constexpr, HAS_MASK_Q: tl.constexpr, DT: tl.constexpr,
            INTERPRET: tl.constexpr):
    """Scores of one key block for the rows' queries, as the kernels' two passes must see them identically:
    [ROWS, BLOCK_N] fp32 holding DT values, -inf where causally masked. q_pos: [ROWS] key position of each
    row's query; qk_scale: [ROWS] qs * s_k * sm_scale."""
    pos = k_start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    k_mask = pos < k_len
    k8 = tl.load(k8_ptr + (k_row0 + pos)[:, None] * stride_kt + kv_off + offs_d[None, :],
                 mask=k_mask[:, None] & d_mask[None, :], other=0)  # [BLOCK_N, BLOCK_D] int8
    if INT_DOT:
        dots = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32).to(tl.float32)  # exact
    else:
        dots = tl.dot(q8.to(tl.float32), tl.trans(k8.to(tl.float32)), input_precision="ieee")  # exact integers
    s = _round(dots * qk_scale[:, None], DT, INTERPRET)  # [ROWS, BLOCK_N]
    if HAS_MASK_Q:
        s = _fq16(s, s_mask, DT, INTERPRET)
    keep = (pos[None, :] <= q_pos[:, None]) & k_mask[None, :]
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _rows(cu_q_ptr, cu_k_ptr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's rows: (token, head) pairs of its query block and KV head's group, flattened."""
    chunk = tl.program_id(0)
    q0 = tl.program_id(1) * BLOCK_M
    kv_head = tl.program_id(2)
    q_row0 = tl.load(cu_q_ptr + chunk)
    q_len = tl.load(cu_q_ptr + chunk + 1) - q_row0
    k_row0 = tl.load(cu_k_ptr + chunk)
    k_len = tl.load(cu_k_ptr + chunk + 1) - k_row0
    r = tl.arange(0, BLOCK_M * BLOCK_G)
    local = q0 + r // BLOCK_G  # query index within the chunk
    head = kv_head * GROUP + r % BLOCK_G
    valid = (local < q_len) & (r % BLOCK_G < GROUP)
    # padding rows act as the chunk's last query (never stored): no row is wholly masked, so no NaN
    q_pos = k_len - q_len + tl.minimum(local, q_len - 1)
    token = q_row0 + tl.minimum(local, q_len - 1)
    return q0, q_len, k_row0, k_len, kv_head, head, valid, q_pos, token


@triton.jit
def _token_ps(l_ptr, cu_q_ptr, num_heads, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, DT: tl.constexpr,
              INTERPRET: tl.constexpr):
    """[BLOCK_M] P's int8 scale of the program's query tokens: (1 / min over heads of l, in DT) / 127."""
    chunk = tl.program_id(0)
    q_row0 = tl.load(cu_q_ptr + chunk)
    q_len = tl.load(cu_q_ptr + chunk + 1) - q_row0
    token = q_row0 + tl.minimum(tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M), q_len - 1)  # as _rows
    offs_h = tl.arange(0, BLOCK_H)
    l_all = tl.load(l_ptr + token[:, None] * num_heads + offs_h[None, :], mask=offs_h[None, :] < num_heads,
                    other=float("inf"))  # [BLOCK_M, BLOCK_H]
    p_max = _round(tl.div_rn(1.0, tl.min(l_all, 1)), DT, INTERPRET)
    return tl.maximum(tl.div_rn(p_max, _Q8), 1.1754943508222875e-38)


@triton.jit
def _pass1_kernel(q8_ptr, qs_ptr, k8_ptr, cu_q_ptr, cu_k_ptr, kv_scales_ptr, m_ptr, l_ptr, sm_scale, s_mask,
                  num_heads, stride_qt, stride_qh, stride_kt, stride_kh,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, INT_DOT: tl.constexpr, HAS_MASK_Q: tl.constexpr,
                  DT: tl.constexpr, INTERPRET: tl.constexpr):
    q0, q_len, k_row0, k_len, kv_head, head, valid, q_pos, token = _rows(cu_q_ptr, cu_k_ptr, GROUP, BLOCK_G, BLOCK_M)
    if q0 < q_len:
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        q8 = tl.load(q8_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                     mask=valid[:, None] & d_mask[None, :], other=0)  # [ROWS, BLOCK_D] int8
        qk_scale = tl.load(qs_ptr + token) * tl.load(kv_scales_ptr + kv_head) * sm_scale  # [ROWS]
        m_i = tl.full([BLOCK_M * BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M * BLOCK_G], tl.float32)
        k_end = tl.minimum(k_len, k_len - q_len + q0 + BLOCK_M)  # the block's last query sees keys < k_end
        for k_start in range(0, k_end, BLOCK_N):
            s = _scores(q8, k8_ptr, k_row0, k_start, k_len, q_pos, stride_kt, kv_head * stride_kh, offs_d, d_mask,
                        qk_scale, s_mask, BLOCK_N, INT_DOT, HAS_MASK_Q, DT, INTERPRET)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * _exp(m_i - m_new, INTERPRET) + tl.sum(_exp(s - m_new[:, None], INTERPRET), 1)
            m_i = m_new
        out = token * num_heads + head
        tl.store(m_ptr + out, m_i, mask=valid)
        tl.store(l_ptr + out, l_i, mask=valid)


@triton.jit
def _pass2_kernel(q8_ptr, qs_ptr, k8_ptr, v8_ptr, cu_q_ptr, cu_k_ptr, kv_scales_ptr, m_ptr, l_ptr, out_ptr,
                  sm_scale, s_mask, s_out, num_heads, num_kv,
                  stride_qt, stride_qh, stride_kt, stride_kh, stride_ot, stride_oh,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, INT_DOT: tl.constexpr,
                  HAS_MASK_Q: tl.constexpr, HAS_OUT_Q: tl.constexpr, DT: tl.constexpr, INTERPRET: tl.constexpr):
    q0, q_len, k_row0, k_len, kv_head, head, valid, q_pos, token = _rows(cu_q_ptr, cu_k_ptr, GROUP, BLOCK_G, BLOCK_M)
    if q0 < q_len:
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        q8 = tl.load(q8_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                     mask=valid[:, None] & d_mask[None, :], other=0)  # [ROWS, BLOCK_D] int8
        qk_scale = tl.load(qs_ptr + token) * tl.load(kv_scales_ptr + kv_head) * sm_scale  # [ROWS]
        row = token * num_heads + head
        m_i = tl.load(m_ptr + row, mask=valid, other=0.0)  # [ROWS]
        l_i = tl.load(l_ptr + row, mask=valid, other=1.0)
        # ps per token: the largest P of any head is 1 / l of the head with the smallest l
        ps_tok = _token_ps(l_ptr, cu_q_ptr, num_heads, BLOCK_M, BLOCK_H, DT, INTERPRET)  # [BLOCK_M]
        ps = tl.reshape(tl.broadcast_to(ps_tok[:, None], [BLOCK_M, BLOCK_G]), [BLOCK_M * BLOCK_G])  # [ROWS]
        acc = tl.zeros([BLOCK_M * BLOCK_G, BLOCK_D], tl.int32 if INT_DOT else tl.float32)
        kv_off = kv_head * stride_kh
        k_end = tl.minimum(k_len, k_len - q_len + q0 + BLOCK_M)
        for k_start in range(0, k_end, BLOCK_N):
            s = _scores(q8, k8_ptr, k_row0, k_start, k_len, q_pos, stride_kt, kv_off, offs_d, d_mask,
                        qk_scale, s_mask, BLOCK_N, INT_DOT, HAS_MASK_Q, DT, INTERPRET)
            p = _round(_div_by(_exp(s - m_i[:, None], INTERPRET), l_i[:, None], INTERPRET), DT, INTERPRET)  # softmax in DT
            p8 = tl.minimum(tl.maximum(_rint(_div_by(p, ps[:, None], INTERPRET), INTERPRET), -_Q8), _Q8)  # [ROWS, BLOCK_N]
            pos = k_start + tl.arange(0, BLOCK_N)
            v8 = tl.load(v8_ptr + (k_row0 + pos)[:, None] * stride_kt + kv_off + offs_d[None, :],
                         mask=(pos < k_len)[:, None] & d_mask[None, :], other=0)  # [BLOCK_N, BLOCK_D] int8
            if INT_DOT:
                acc += tl.dot(p8.to(tl.int8), v8, out_dtype=tl.int32)
            else:
                acc += tl.dot(p8, v8.to(tl.float32), input_precision="ieee")  # integers: exact
        o = _round(acc.to(tl.float32) * (ps * tl.load(kv_scales_ptr + num_kv + kv_head))[:, None], DT, INTERPRET)
        if HAS_OUT_Q:
            o = _fq16(o, s_out, DT, INTERPRET)
        tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :], o.to(DT),
                 mask=valid[:, None] & d_mask[None, :])


def _check(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, kv_scales: torch.Tensor) -> None:
    for name, t in (("q8", q8), ("k8", k8), ("v8", v8)):
        if t.dtype != torch.int8 or t.dim() != 3:
            raise UserError(f"whole-config prefill: {name} must be int8 [T, heads, D], got {t.dtype} "
                            f"{tuple(t.shape)}")
    if k8.shape != v8.shape or q8.shape[2] != k8.shape[2] or q8.shape[1] % k8.shape[1]:
        raise UserError(f"whole-config prefill: q8 {tuple(q8.shape)}, k8 {tuple(k8.shape)}, v8 {tuple(v8.shape)} "
                        "do not fit (same D, heads a multiple of KV heads)")
    if qs.shape != (q8.shape[0],) or kv_scales.shape != (2, k8.shape[1]):
        raise UserError(f"whole-config prefill: qs {tuple(qs.shape)} / kv_scales {tuple(kv_scales.shape)} do not "
                        f"match q8 {tuple(q8.shape)} and k8 {tuple(k8.shape)}")


def prefill_q8(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
               cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
               sm_scale: float, kv_scales: torch.Tensor, s_mask: Optional[float], s_out: Optional[float],
               out_dtype: torch.dtype, block_m: Optional[int] = None, block_n: int = 64,
               int_dot: bool = True, num_warps: int = 8) -> torch.Tensor:
    """q8: [Tq, H, D] int8, qs: [Tq] fp32; k8, v8: [Tk, KV, D] int8 (chunk i's whole context at rows
    cu_seqlens_k[i]:cu_seqlens_k[i + 1]); cu_seqlens_q / _k: [P + 1] int32; kv_scales: [2, KV] fp32;
    s_mask / s_out: static 16-bit scales, None = no quantizer. -> [Tq, H, D] out_dtype.
    block_m: queries per program (default: 128 rows of (token, head)); block_n: keys per loop step (32 at least);
    int_dot: int8 x int8 -> int32 dots (False: fp32 dots of the same integers, also exact). num_warps: 8 keeps
    pass 2's 128-row int32 accumulator in registers (with 4, sm_90 spills it: 255 registers and a stack)."""
    _check(q8, qs, k8, v8, kv_scales)
    t, h, d = q8.shape
    kv = k8.shape[1]
    group = h // kv
    block_g = triton.next_power_of_2(group)
    block_m = block_m or max(1, 128 // block_g)
    block_m = max(block_m, triton.cdiv(16, block_g))  # tl.dot needs 16 rows
    block_d = max(_MIN_K, triton.next_power_of_2(d))
    if out_dtype not in _TL_DTYPE:
        raise UserError(f"whole-config prefill: out_dtype must be one of {list(_TL_DTYPE)}, got {out_dtype}")
    out = torch.empty(t, h, d, dtype=out_dtype, device=q8.device)
    num_chunks = cu_seqlens_q.numel() - 1
    if t == 0 or num_chunks == 0:
        return out
    m = torch.empty(t, h, dtype=torch.float32, device=q8.device)  # row max of the quantized scores
    l = torch.empty(t, h, dtype=torch.float32, device=q8.device)  # softmax denominator
    qs, kv_scales = qs.float().contiguous(), kv_scales.float().contiguous()
    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()  # unit last stride; one set for k8 and v8
    grid = (num_chunks, triton.cdiv(max_seqlen_q, block_m), kv)
    has_mask_q, has_out_q = s_mask is not None, s_out is not None
    common = dict(GROUP=group, BLOCK_G=block_g, BLOCK_M=block_m, BLOCK_N=max(_MIN_K, block_n), HEAD_DIM=d,
                  BLOCK_D=block_d, INT_DOT=int_dot, HAS_MASK_Q=has_mask_q, DT=_TL_DTYPE[out_dtype],
                  INTERPRET=_INTERPRET, num_warps=num_warps)
    launch(_pass1_kernel, grid,
        q8, qs, k8, cu_seqlens_q, cu_seqlens_k, kv_scales, m, l, float(sm_scale), float(s_mask or 1.0),
        h, q8.stride(0), q8.stride(1), k8.stride(0), k8.stride(1), **common)
    launch(_pass2_kernel, grid,
        q8, qs, k8, v8, cu_seqlens_q, cu_seqlens_k, kv_scales, m, l, out, float(sm_scale), float(s_mask or 1.0),
        float(s_out or 1.0), h, kv, q8.stride(0), q8.stride(1), k8.stride(0), k8.stride(1),
        out.stride(0), out.stride(1), BLOCK_H=triton.next_power_of_2(h), HAS_OUT_Q=has_out_q, **common)
    return out
