"""An activation already quantized per token by the kernel that produced it, for an 8-bit Linear to take as is.

`QuantizedActivation(q, scale)`: q [M, K] int8 or e4m3, scale [M] float32, such that q * scale[:, None] is
the activation, exactly as the Linear's own per-token quantizer would have written it. `prequantized_kind`
says which Linears take one: the 8-bit ones that are not row-parallel (a row-parallel Linear's per-token
scale spans every rank's slice of K, so it keeps quantizing its own input after an absmax all-reduce).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

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
