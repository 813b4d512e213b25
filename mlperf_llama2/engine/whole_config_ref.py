"""The whole-config int8 mode's elementwise steps in torch: the simulate path's numbers, on any device.

    add_rms_norm_q8_torch(h, delta, w, eps)       -> (h_new [T, N], x8 [T, N] int8, xs [T])     steps 1, 2, 3
    rope_store_q8_torch(qkv, positions, cos, ...) -> (q8 [T, H, D], qs [T], k8 [T, KV, D], v8)   steps 4, 5, 6
    silu_mul_q8_torch(gate_up, s_silu, s_mul)     -> (m8 [T, I] int8, ms [T])                    steps 11, 3

Contract: what quant/destinations.py computes with per-sample scales (Numerics(batch_shared_scale=False)),
built only from quant/fake_quant.py, engine/ops.py, kv_cache.quantize and Int8Linear's per-token quantizer.
whole_config_triton.py fuses each into one kernel; this module imports no Triton, so the eager path runs
where Triton is absent. A quantizer a config lacks is skipped: add_bits / norm_bits None, a rope scale <= 0,
silu_scale / mul_scales None. Static scales are given as float32 tensors (already absmax / qmax).
"""

from __future__ import annotations

from typing import Optional

import torch

from mlperf_llama2.engine import kv_cache
from mlperf_llama2.engine.ops import rms_norm, rotate_half
from mlperf_llama2.quant.fake_quant import Numerics, fake_quant, qrange, round_ints
from mlperf_llama2.quant.int8_linear import quantize_rows_reference

ACT_BITS = 16  # the rope, SiLU and mul quantizers of w8a8_npm_v1_3_4
NUMERICS = Numerics(batch_shared_scale=False)  # per-sample scales; narrow range, half to even


def _row_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each row of x [T, N] as [T, 1] float32: a per-token dynamic quantizer's MinMax range."""
    return x.amin(dim=-1, keepdim=True).float(), x.amax(dim=-1, keepdim=True).float()


def fake_quant_static(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """fake_quant's symmetric arithmetic with the scale given (a static quantizer's frozen scale, float32
    tensor): (clamp(rne(x / scale)) * scale) in x's dtype."""
    qmin, qmax = qrange(bits, True, NUMERICS.narrow_range)
    q = round_ints(x.float() / scale, NUMERICS.rounding).clamp(qmin, qmax)
    return (q * scale).to(x.dtype)


def _fake_quant_if(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """fake_quant_static where scale > 0, else x: the rope scales mark an absent quantizer by <= 0."""
    present = scale > 0
    return torch.where(present, fake_quant_static(x, torch.where(present, scale, torch.ones_like(scale)), bits), x)


def add_rms_norm_q8_torch(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                          add_bits: Optional[int] = ACT_BITS, norm_bits: Optional[int] = ACT_BITS
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """add_rms_norm_q8 in torch: QuantAddCommonScalePerToken, QuantRMSNorm, then Int8Linear's input quantizer."""
    if delta is not None:
        if add_bits is None:
            h = h + delta
        else:
            (lo_h, hi_h), (lo_d, hi_d) = _row_range(h), _row_range(delta)
            lo, hi = torch.minimum(lo_h, lo_d), torch.maximum(hi_h, hi_d)  # [T, 1]: one scale for both inputs
            h = fake_quant(h, lo, hi, add_bits, True, NUMERICS) + fake_quant(delta, lo, hi, add_bits, True,
                                                                               NUMERICS)
    x = h if norm_bits is None else fake_quant(h, *_row_range(h), norm_bits, True, NUMERICS)
    x8, xs = quantize_rows_reference(rms_norm(x, weight, eps))
    return h, x8, xs


def rope_store_q8_torch(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
                        num_kv_heads: int, head_dim: int, rope_scales: torch.Tensor, kv_scales: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """rope_store_q8 in torch: QuantAdd RoPE on q and k, the int8 KV cache, q per token across all heads."""
    t = qkv.shape[0]
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]  # [T, 1, D]

    def rope(x: torch.Tensor, s_cos: torch.Tensor, s_sin: torch.Tensor) -> torch.Tensor:
        # x: [T, heads, D]
        return _fake_quant_if(x * c, s_cos, ACT_BITS) + _fake_quant_if(rotate_half(x) * s, s_sin, ACT_BITS)

    q = rope(q.view(t, num_heads, head_dim), rope_scales[0], rope_scales[1])
    k = rope(k.view(t, num_kv_heads, head_dim), rope_scales[2], rope_scales[3])
    q8, qs = quantize_rows_reference(q.reshape(t, num_heads * head_dim))
    k8 = kv_cache.quantize(k, kv_scales[0], torch.int8)  # [T, KV, D]
    v8 = kv_cache.quantize(v.view(t, num_kv_heads, head_dim), kv_scales[1], torch.int8)
    kv_cache.store(k_cache, slot_mapping, k8)
    kv_cache.store(v_cache, slot_mapping, v8)
    return q8.view(t, num_heads, head_dim), qs, k8, v8


def silu_mul_q8_torch(gate_up: torch.Tensor, silu_scale: Optional[torch.Tensor],
                      mul_scales: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """silu_mul_q8 in torch: SingleInputQuantActivation(SiLU), QuantMul, then Int8Linear's input quantizer."""
    gate, up = gate_up.chunk(2, dim=-1)
    if silu_scale is not None:
        gate = fake_quant_static(gate, silu_scale.reshape(()), ACT_BITS)
    act = torch.nn.functional.silu(gate)
    if mul_scales is not None:
        act, up = fake_quant_static(act, mul_scales[0], ACT_BITS), fake_quant_static(up, mul_scales[1], ACT_BITS)
    return quantize_rows_reference(act * up)
