"""The paged KV cache's storage format: model dtype (`auto`) or 8 bits with static scales (`fp8`, `int8`).

An 8-bit cache stores `quant(x / scale)` and attention reads `stored * scale`, with one static
scale per layer and key/value head: `scales: float32 [2, num_layers, num_kv_heads]` (0 = K, 1 = V;
a per-tensor scale is the same value repeated over the heads). `fp8` is E4M3 (torch.float8_e4m3fn,
saturated at +-448, round to nearest even); `int8` is symmetric, round half to even, clamped to
+-127. These torch functions are the CPU path and the reference the Triton kernels
(`fused_triton.rope_store`, `paged_decode_triton`) are tested against; attention always sees
`dequantize(quantize(x))`, whether the keys come from the step itself or from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from mlperf_llama2.engine.config import KV_CACHE_DTYPES, KV_SCALES_HINT
from mlperf_llama2.errors import UserError

FP8_MAX = 448.0  # largest finite float8_e4m3fn
QMAX = {"fp8": FP8_MAX, "int8": 127.0}  # an 8-bit cache's largest value: scale = amax / QMAX[dtype]
INT8_MAX = 127.0  # symmetric range, -128 unused
_STORAGE = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


@dataclass(frozen=True, eq=False)
class KVCacheSpec:
    """What the cache stores: `dtype` one of KV_CACHE_DTYPES; `scales` [2, L, KV] float32 for fp8/int8."""

    dtype: str = "auto"
    scales: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.dtype not in KV_CACHE_DTYPES:
            raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.dtype!r}")
        if not self.quantized:
            if self.scales is not None:
                raise UserError("KV scales were given but --kv-cache-dtype is auto: choose fp8 or int8 to use them")
            return
        if self.scales is None:
            raise UserError(f"--kv-cache-dtype {self.dtype} {KV_SCALES_HINT}")
        s = self.scales
        if s.dim() != 3 or s.shape[0] != 2:
            raise UserError(f"KV scales must have shape [2, layers, kv_heads], got {list(s.shape)}")
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise UserError("KV scales must be finite and > 0")

    @property
    def quantized(self) -> bool:
        return self.dtype != "auto"

    def storage_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return _STORAGE.get(self.dtype, model_dtype)

    def check_shape(self, num_layers: int, num_kv_heads: int) -> None:
        if self.quantized and tuple(self.scales.shape[1:]) != (num_layers, num_kv_heads):
            raise UserError(f"KV scales are for {self.scales.shape[1]} layers x {self.scales.shape[2]} KV heads; "
                            f"the model has {num_layers} x {num_kv_heads}")

    def layer_scales(self, device: torch.device) -> Optional[torch.Tensor]:
        """[L, 2, KV] float32 on `device` (each layer's K and V scales contiguous), or None for auto."""
        if not self.quantized:
            return None
        return self.scales.to(device=device, dtype=torch.float32).transpose(0, 1).contiguous()

    def shard(self, rank: int, world: int) -> "KVCacheSpec":
        """Tensor parallelism: rank r holds KV heads [r*KV/N, (r+1)*KV/N), so it keeps those heads' scales."""
        if not self.quantized:
            return self
        kv = self.scales.shape[2]
        if kv % world:
            raise UserError(f"KV scales for {kv} KV heads cannot be split over {world} ranks")
        n = kv // world
        return KVCacheSpec(self.dtype, self.scales[:, :, rank * n:(rank + 1) * n].contiguous())


def quantize(x: torch.Tensor, scale: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """x: [T, KV, D] (any float dtype); scale: [KV] float32 -> quant(x / scale): [T, KV, D] in `storage`."""
    y = x.float() / scale[:, None]
    if storage == torch.int8:
        return torch.round(y).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)  # torch.round: half to even
    if storage == torch.float8_e4m3fn:
        return y.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)  # E4M3 has no inf: saturate first
    raise ValueError(f"not an 8-bit KV storage dtype: {storage}")


def dequantize(stored: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """stored: [T, KV, D] 8-bit; scale: [KV] float32 -> stored * scale in `dtype` (rounded once, from fp32)."""
    return (stored.float() * scale[:, None]).to(dtype)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype: what attention sees of an 8-bit cache."""
    return dequantize(quantize(x, scale, storage), scale, x.dtype)


def store(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor) -> None:
    """cache[slots] = values along dim 0 (fp8 through a byte view: CPU index_copy_ has no float8 kernel)."""
    if cache.dtype == torch.float8_e4m3fn:
        cache, values = cache.view(torch.uint8), values.view(torch.uint8)
    cache.index_copy_(0, slots, values)


def gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache[slots] along dim 0, in the cache's dtype (fp8 through a byte view, as `store`)."""
    if cache.dtype == torch.float8_e4m3fn:
        return cache.view(torch.uint8).index_select(0, slots).view(cache.dtype)
    return cache.index_select(0, slots)


def allocate(spec: KVCacheSpec, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
             device: torch.device, model_dtype: torch.dtype) -> torch.Tensor:
    """The zeroed cache [2, L, slots, KV, D] in the spec's storage dtype."""
    return torch.zeros(2, num_layers, num_slots, num_kv_heads, head_dim, device=device,
                       dtype=spec.storage_dtype(model_dtype))


def element_size(spec: KVCacheSpec, model_dtype: torch.dtype) -> int:
    """Bytes per cached value: sizes the block count (an 8-bit cache holds twice the blocks of a 16-bit one)."""
    return spec.storage_dtype(model_dtype).itemsize
