"""The whole-config int8 mode's decode attention (w8a8_npm_v1_3_4, spec steps 6-10) in torch: the reference.

Contract: `decode_q8_torch` returns per sequence exactly what simulate's `matmul_qkt`, `* sm_scale`, `add_mask`,
softmax and `matmul_pv` modules return for one query token over its cached context (Numerics defaults, a
per-sequence scale), given the int8 query and cache:

    qd = q8 * qs, kd = k8 * s_k, vd = v8 * s_v                   (int8 values, fp32 scales, rounded to dt)
    S  = fq16(round_dt(round_dt(qd . kd) * sm_scale), s_mask)    (16-bit static; s_mask None: no quantizer)
    P  = softmax(S) in fp32, rounded to dt
    ps = max over heads and keys of P / 127                      (= round_dt(1 / min_h l_h) / 127)
    O  = fq16(round_dt(fq8(P, ps) . vd), s_out)                  (s_out None: no quantizer)

It imports no Triton: it is the engine's CPU path and the reference the kernels of
`whole_config_decode_triton` are tested against. `check_inputs` is the shape/dtype contract both share.
"""

from __future__ import annotations

from typing import Optional

import torch

from mlperf_llama2.engine.kv_cache import dequantize, gather
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fake_quant import qrange, round_ints, symmetric_scale

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MASK_BITS = 16  # add_mask's quantizer
OUT_BITS = 16  # matmul_pv's quantizer_out
P_BITS = 8  # matmul_pv's quantizer_in1


def _fq_static(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """fake_quant's symmetric branch with the scale given: (clamp(rne(x / s)) * s) in fp32, back to x.dtype."""
    qmin, qmax = qrange(bits, symmetric=True, narrow_range=True)
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return (round_ints(x.float() / s, "half_even").clamp(qmin, qmax) * s).to(x.dtype)


def _fq_dynamic(x: torch.Tensor, bits: int) -> torch.Tensor:
    """One dynamic symmetric scale over all of x (simulate's per-token scale of one sequence): fq(x, amax / qmax)."""
    qmin, qmax = qrange(bits, symmetric=True, narrow_range=True)
    scale = symmetric_scale(x.detach().abs().amax().float(), bits)
    return (round_ints(x.float() / scale, "half_even").clamp(qmin, qmax) * scale).to(x.dtype)


def _slots(table: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Cache slots of a sequence's first n positions: [n] int64."""
    pos = torch.arange(n, device=table.device)
    return table.long()[pos // block_size] * block_size + pos % block_size


def decode_q8_torch(q8: torch.Tensor, qs: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor, sm_scale: float, block_size: int,
                    kv_scales: torch.Tensor, s_mask: Optional[float], s_out: Optional[float],
                    out_dtype: torch.dtype) -> torch.Tensor:
    """Simulate's attention for one query token per sequence, sequence by sequence, in `out_dtype` (see module)."""
    check_inputs(q8, qs, k_cache, v_cache, block_tables, context_lens, kv_scales, out_dtype)
    h = q8.shape[1]
    group = h // k_cache.shape[1]
    outs = []
    for b, n in enumerate(context_lens.tolist()):
        slots = _slots(block_tables[b], n, block_size)
        qd = (q8[b].float() * qs[b]).to(out_dtype)[None, :, None]  # [1, H, 1, D]
        kd = dequantize(gather(k_cache, slots), kv_scales[0], out_dtype)  # [n, KV, D]
        vd = dequantize(gather(v_cache, slots), kv_scales[1], out_dtype)
        kd = kd.transpose(0, 1).repeat_interleave(group, 0)[None]  # [1, H, n, D], as repeat_kv
        vd = vd.transpose(0, 1).repeat_interleave(group, 0)[None]
        s = torch.matmul(qd, kd.transpose(2, 3)) * sm_scale  # [1, H, 1, n]
        if s_mask is not None:
            s = _fq_static(s, s_mask, MASK_BITS)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(out_dtype)
        o = torch.matmul(_fq_dynamic(p, P_BITS), vd)  # [1, H, 1, D]
        if s_out is not None:
            o = _fq_static(o, s_out, OUT_BITS)
        outs.append(o[0, :, 0])
    return torch.stack(outs)  # [B, H, D]


def check_inputs(q8, qs, k_cache, v_cache, block_tables, context_lens, kv_scales, out_dtype) -> None:
    """One clear line for inputs the kernels cannot take."""
    if out_dtype not in OUT_DTYPES:
        raise UserError(f"whole-config decode: out_dtype must be float16, bfloat16 or float32, got {out_dtype}")
    for name, t in (("q8", q8), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != torch.int8 or t.dim() != 3:
            raise UserError(f"whole-config decode: {name} must be a 3-d int8 tensor, got {t.dtype} "
                            f"{list(t.shape)}")
    b, h, d = q8.shape
    kv = k_cache.shape[1]
    if k_cache.shape != v_cache.shape or k_cache.shape[2] != d or h % kv:
        raise UserError(f"whole-config decode: caches {list(k_cache.shape)} / {list(v_cache.shape)} do not fit "
                        f"q8 {list(q8.shape)} (same head_dim, heads a multiple of KV heads)")
    if qs.shape != (b,) or qs.dtype != torch.float32:
        raise UserError(f"whole-config decode: qs must be float32 [{b}], got {qs.dtype} {list(qs.shape)}")
    if kv_scales.shape != (2, kv) or kv_scales.dtype != torch.float32:
        raise UserError(f"whole-config decode: kv_scales must be float32 [2, {kv}], got {kv_scales.dtype} "
                        f"{list(kv_scales.shape)}")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or context_lens.shape != (b,):
        raise UserError(f"whole-config decode: block_tables [{b}, W] and context_lens [{b}] expected, got "
                        f"{list(block_tables.shape)} and {list(context_lens.shape)}")
