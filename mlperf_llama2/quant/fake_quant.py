"""Fake quantization (quantize -> dequantize) exactly as a rule's QuantizerSpec says, plus its observers.

A `FakeQuantizer` is one quantizer of one slot. Dynamic: the range comes from the tensor itself
(MinMax over the spec's `dims`). Static: the range comes from calibration (`calibrating = True`
observes and passes the tensor through unchanged; MovingAverage or running MinMax), then is frozen.
Arithmetic is float32 whatever the model dtype, so a 16-bit quantizer is exact on fp16 models.
The choices public material leaves open are `Numerics` fields (documented in docs/quantization.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.yaml_config import QuantizerSpec

logger = logging.getLogger(__name__)

ROUNDINGS = ("half_even", "half_away")


@dataclass(frozen=True)
class Numerics:
    """What public material does not fix; our defaults and why are in docs/quantization.md."""

    momentum: float = 0.01  # MovingAverage: r <- r + momentum * (batch - r); first batch initialises
    rounding: str = "half_even"  # torch.round; "half_away" rounds .5 away from zero
    narrow_range: bool = True  # symmetric int8 in [-127, 127] (False: [-128, 127])
    batch_shared_scale: bool = True  # a per-token scale whose dims list axis 0 spans the batch, as written

    def __post_init__(self) -> None:
        if not 0.0 < self.momentum <= 1.0:
            raise UserError(f"quantization momentum must be in (0, 1], got {self.momentum}")
        if self.rounding not in ROUNDINGS:
            raise UserError(f"quantization rounding must be one of {ROUNDINGS}, got {self.rounding!r}")


def qrange(bits: int, symmetric: bool, narrow_range: bool) -> tuple[int, int]:
    """Integer range of a quantizer: symmetric signed (narrow or full) or asymmetric unsigned."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow_range else -qmax - 1), qmax
    return 0, 2**bits - 1


def round_ints(x: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "half_even":
        return torch.round(x)
    # half away from zero from the exact fraction x - trunc(x): floor(|x| + 0.5) would round 0.49999997
    # (the float32 just below 0.5) to 1, because |x| + 0.5 itself rounds up to 1.0
    whole = torch.trunc(x)
    return torch.where((x - whole).abs() >= 0.5, whole + torch.sign(x), whole)


def reduce_axes(ndim: int, dims: tuple[int, ...], batch_shared_scale: bool) -> tuple[int, ...]:
    """Axes a scale is reduced over for a tensor of rank `ndim` (dims () = all axes)."""
    axes = tuple(sorted({d % ndim for d in dims})) if dims else tuple(range(ndim))
    if not batch_shared_scale and len(axes) < ndim and 0 in axes and ndim > 1:
        axes = tuple(a for a in axes if a != 0)
    return axes


def true_div(a: torch.Tensor, divisor: float) -> torch.Tensor:
    """a / divisor correctly rounded on every device (CUDA turns division by a Python scalar into a
    multiplication by its reciprocal, which can differ in the last bit)."""
    return a.float() / torch.full((), float(divisor), dtype=torch.float32, device=a.device)


def symmetric_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 scale = absmax / qmax, never zero (an all-zero slice quantizes to zeros)."""
    return true_div(absmax, 2 ** (bits - 1) - 1).clamp_min(torch.finfo(torch.float32).tiny)


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool,
               numerics: Numerics) -> torch.Tensor:
    """Quantize x to `bits` with the range [lo, hi] (broadcastable to x), dequantize, return x.dtype."""
    qmin, qmax = qrange(bits, symmetric, numerics.narrow_range)
    xf = x.float()
    if symmetric:
        scale = symmetric_scale(torch.maximum(lo.abs(), hi.abs()), bits)
        q = round_ints(xf / scale, numerics.rounding).clamp(qmin, qmax)
        return (q * scale).to(x.dtype)
    lo, hi = lo.float().clamp(max=0.0), hi.float().clamp(min=0.0)  # zero stays exactly representable
    span = hi - lo  # inf when the range is wider than float32's largest value: divide each end instead
    span_scale = torch.where(torch.isinf(span), true_div(hi, qmax - qmin) - true_div(lo, qmax - qmin),
                             true_div(span, qmax - qmin))
    scale = span_scale.clamp_min(torch.finfo(torch.float32).tiny)
    zero_point = (qmin - round_ints(lo / scale, numerics.rounding)).clamp(qmin, qmax)
    q = (round_ints(xf / scale, numerics.rounding) + zero_point).clamp(qmin, qmax)
    return ((q - zero_point) * scale).to(x.dtype)


class FakeQuantizer(nn.Module):
    """One quantizer of one slot; `name` is its place in the model, for messages."""

    def __init__(self, spec: QuantizerSpec, numerics: Numerics, name: str, rule_label: str) -> None:
        super().__init__()
        self.spec = spec
        self.numerics = numerics
        self.name = name
        self.rule_label = rule_label
        self.calibrating = False
        self.register_buffer("running_min", None)
        self.register_buffer("running_max", None)

    @property
    def calibrated(self) -> bool:
        return self.running_min is not None

    def extra_repr(self) -> str:
        return self.spec.describe()

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Range of x reduced over the spec's axes (keepdim, so it broadcasts back onto x)."""
        axes = reduce_axes(x.dim(), self.spec.dims, self.numerics.batch_shared_scale)
        xd = x.detach()
        return xd.amin(dim=axes, keepdim=True).float(), xd.amax(dim=axes, keepdim=True).float()

    def observe(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Static quantizers: fold one calibration batch's range into the running range."""
        if not self.calibrated:
            self.running_min, self.running_max = lo.clone(), hi.clone()
            return
        if lo.shape != self.running_min.shape:
            raise UserError(f"{self.rule_label}: static quantizer at {self.name} saw range shape "
                            f"{tuple(lo.shape)} after {tuple(self.running_min.shape)}; a static scale needs "
                            "dims that reduce every axis whose size varies (sequence, batch)")
        if self.spec.observer == "MovingAverage":
            m = self.numerics.momentum
            self.running_min = self.running_min + m * (lo - self.running_min)
            self.running_max = self.running_max + m * (hi - self.running_max)
        else:
            self.running_min = torch.minimum(self.running_min, lo)
            self.running_max = torch.maximum(self.running_max, hi)

    def quant_range(self, x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(lo, hi) to quantize x with; None while calibrating (x passes through in float)."""
        if self.spec.dynamic:
            return self.batch_range(x)
        if self.calibrating:
            self.observe(*self.batch_range(x))
            return None
        if not self.calibrated:
            raise UserError(f"{self.rule_label}: static quantizer at {self.name} was never calibrated; "
                            "give calibration data (--calibration-path) or make the rule dynamic")
        return self.running_min, self.running_max

    def apply(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, lo, hi, self.spec.bits, self.spec.symmetric, self.numerics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rng = self.quant_range(x)
        return x if rng is None else self.apply(x, *rng)


def set_calibrating(model: nn.Module, on: bool) -> int:
    """Switch every static FakeQuantizer into (or out of) observation; returns how many there are."""
    count = 0
    for module in model.modules():
        if isinstance(module, FakeQuantizer) and not module.spec.dynamic:
            module.calibrating = on
            count += 1
    return count
