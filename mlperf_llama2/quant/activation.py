"""An activation already quantized per token by the kernel that produced it, for an 8-bit Linear to take as is.

`QuantizedActivation(q, scale)`: q [M, K] int8 or e4m3, scale [M] float32, such that q * scale[:, None] is
the activation, exactly as the Linear's own per-token quantizer would have written it. `prequantized_kind`
says which Linears take one: the 8-bit ones that are not row-parallel (a row-parallel Linear's per-token
scale spans every rank's slice of K, so it keeps quantizing its own input after an absmax all-reduce).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn


class QuantizedActivation(NamedTuple):
    q: torch.Tensor  # [M, K] int8 or float8_e4m3fn
    scale: torch.Tensor  # [M] float32


def prequantized_kind(linear: nn.Module) -> Optional[str]:
    """"int8" or "fp8" when `linear` takes a QuantizedActivation of that kind, else None."""
    if getattr(linear, "row_parallel", False):
        return None
    return getattr(linear, "act_kind", None)


def row_absmax(x: torch.Tensor, group) -> torch.Tensor:
    """Each row's absolute maximum over the whole row when its columns are split over `group`'s ranks."""
    import torch.distributed as dist

    absmax = x.float().abs().amax(dim=1)  # [M]
    dist.all_reduce(absmax, op=dist.ReduceOp.MAX, group=group)
    return absmax


class Quant8Linear(nn.Module):
    """What the 8-bit Linears (int8_linear.Int8Linear, fp8.Fp8Linear) share: weights [N, K] in `weight_dtype` with
    one float32 scale per output channel, an optional bias in the output dtype, `split_sizes` (the projections a
    fused Linear concatenates), and the per-token quantization of a float input (or a QuantizedActivation taken
    as is). Subclasses give `act_kind`, `weight_dtype` and `quantize_rows(x, absmax)`, and their GEMMs."""

    act_kind: str  # takes a QuantizedActivation of this kind in place of a float input
    weight_dtype: torch.dtype
    row_parallel = False  # tensor parallelism splits the input along K: all-reduce each token's absmax
    act_scale_group = None  # ... over this group (None: the default group)

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 out_dtype: torch.dtype = torch.float16, split_sizes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if qweight.dtype != self.weight_dtype or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D {self.weight_dtype} tensor, got {qweight.dtype} "
                             f"{tuple(qweight.shape)}")
        n, k = qweight.shape
        if weight_scale.shape != (n,):
            raise ValueError(f"weight_scale must have shape ({n},), got {tuple(weight_scale.shape)}")
        self.in_features, self.out_features = k, n
        self.out_dtype = out_dtype
        self.split_sizes = tuple(split_sizes) if split_sizes else (n,)
        self.register_buffer("qweight", qweight.contiguous())  # [N, K] 8-bit
        self.register_buffer("weight_scale", weight_scale.float().contiguous())  # [N]
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    @staticmethod
    def quantize_rows(x: torch.Tensor, absmax: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, K] float -> (8-bit [M, K], float32 scale [M]); absmax: each row's, when given (tensor parallel)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, splits={self.split_sizes}"

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.weight_scale[:, None]  # [N, K]

    def quantized_input(self, x) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
        """(leading shape, 8-bit [M, K], scale [M]) of a float input [..., K] or a QuantizedActivation."""
        if isinstance(x, QuantizedActivation):
            if x.q.dtype != self.weight_dtype:
                raise ValueError(f"{type(self).__name__} takes a {self.weight_dtype} QuantizedActivation, "
                                 f"got {x.q.dtype}")
            return x.q.shape[:-1], x.q, x.scale
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        absmax = row_absmax(x2, self.act_scale_group) if self.row_parallel else None
        return (x.shape[:-1], *self.quantize_rows(x2, absmax))

    @classmethod
    def quantize_tokens(cls, x: torch.Tensor) -> QuantizedActivation:
        """x [M, K] float -> the 8-bit activation, as forward quantizes a float input not split over ranks."""
        return QuantizedActivation(*cls.quantize_rows(x))

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs of a fused Linear, one per projection."""
        return torch.split(y, self.split_sizes, dim=-1)
