"""The decoder's elementwise steps, as eager torch ops (any device) or fused Triton kernels (CUDA).

`EagerOps` is transformers' Llama op for op (the CPU path and the fidelity reference);
`FusedOps` (`fused_triton.py`) does the same work in three kernels per step kind and rounds the
same way. `ops_for(device, choice)` picks by `EngineConfig.ops` (`--engine-ops`): auto is fused on
CUDA and eager elsewhere; eager or fused forces one (for A/B runs).

The quantizing producers (`add_rms_norm_quant`, `silu_mul_quant`; kind "int8" or "fp8") also return the
next 8-bit Linear's input, values and per-token scales: eagerly, the producer then that Linear's own
quantizer (`quantize_tokens`: so an engine gives the same numbers with or without them); fused, one kernel
that writes no 16-bit activation (`fused_quant_triton.py`, equal to the unfused path bit for bit).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mlperf_llama2.engine import kv_cache
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.fp8 import Fp8Linear
from mlperf_llama2.quant.int8_linear import Int8Linear


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, heads, D]; cos, sin: [T, D]
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def quantize_tokens(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] -> (8-bit [T, K], float32 scale [T]): the per-token quantizer an 8-bit Linear of `kind` runs."""
    linears = {"int8": Int8Linear, "fp8": Fp8Linear}
    if kind not in linears:
        raise UserError(f"activation quantization kind must be one of fp8, int8, got {kind!r}")
    return tuple(linears[kind].quantize_tokens(x))


def rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale by the weight."""
    dtype = h.dtype
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class EagerOps:
    @staticmethod
    def rope_tables(positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """What rope_store takes as cos, sin: the rows of the step's positions ([T, D]), gathered once a step."""
        return cos[positions], sin[positions]

    @staticmethod
    def add_rms_norm(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + delta, RMSNorm(h + delta)); delta None: (h, RMSNorm(h))."""
        if delta is not None:
            h = h + delta
        return h, rms_norm(h, weight, eps)

    @staticmethod
    def rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
                   num_kv_heads: int, head_dim: int,
                   kv_scales: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate q and k of qkv [T, (H + 2 KV) * D] (cos, sin: [T, D] from rope_tables), store k, v at their
        slots; q, k, v as [T, heads, D]. An 8-bit cache (kv_scales [2, KV]: the layer's K, V scales) stores
        quantize(k), quantize(v) and the k, v returned are their dequantized values, as attention reads them."""
        t = qkv.shape[0]
        q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
        q = apply_rope(q.view(t, num_heads, head_dim), cos, sin)
        k = apply_rope(k.view(t, num_kv_heads, head_dim), cos, sin)
        v = v.view(t, num_kv_heads, head_dim)
        if kv_scales is None:
            k_cache.index_copy_(0, slot_mapping, k)
            v_cache.index_copy_(0, slot_mapping, v)
            return q, k, v
        k8 = kv_cache.quantize(k, kv_scales[0], k_cache.dtype)  # [T, KV, D] 8-bit
        v8 = kv_cache.quantize(v, kv_scales[1], v_cache.dtype)
        kv_cache.store(k_cache, slot_mapping, k8)
        kv_cache.store(v_cache, slot_mapping, v8)
        return q, kv_cache.dequantize(k8, kv_scales[0], k.dtype), kv_cache.dequantize(v8, kv_scales[1], v.dtype)

    @staticmethod
    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return nn.functional.silu(gate) * up

    @staticmethod
    def add_rms_norm_quant(h: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                           kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h + delta [T, N], 8-bit RMSNorm(h + delta) [T, N], float32 scale [T])."""
        h, x = EagerOps.add_rms_norm(h, delta, weight, eps)
        return (h, *quantize_tokens(x, kind))

    @staticmethod
    def silu_mul_quant(gate_up: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """gate_up [T, 2 I] -> (8-bit silu(gate) * up [T, I], float32 scale [T])."""
        return quantize_tokens(EagerOps.silu_mul(gate_up), kind)


class FusedOps:
    @staticmethod
    def rope_tables(positions, cos, sin):
        return cos, sin  # the kernel reads each token's row by its position

    @staticmethod
    def add_rms_norm(h, delta, weight, eps):
        from mlperf_llama2.engine.fused_triton import add_rms_norm

        return add_rms_norm(h, delta, weight, eps)

    @staticmethod
    def rope_store(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, num_heads, num_kv_heads, head_dim,
                   kv_scales=None):
        from mlperf_llama2.engine.fused_triton import rope_store

        return rope_store(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, num_heads, num_kv_heads,
                          head_dim, kv_scales)

    @staticmethod
    def silu_mul(gate_up):
        from mlperf_llama2.engine.fused_triton import silu_mul

        return silu_mul(gate_up)

    @staticmethod
    def add_rms_norm_quant(h, delta, weight, eps, kind):
        from mlperf_llama2.engine.fused_quant_triton import add_rms_norm_quant

        return add_rms_norm_quant(h, delta, weight, eps, kind)

    @staticmethod
    def silu_mul_quant(gate_up, kind):
        from mlperf_llama2.engine.fused_quant_triton import silu_mul_quant

        return silu_mul_quant(gate_up, kind)


def ops_for(device: torch.device, choice: str = "auto"):
    """`choice`: one of engine/config.py's ENGINE_OPS."""
    if choice == "fused" or (choice == "auto" and device.type == "cuda"):
        return FusedOps
    return EagerOps
