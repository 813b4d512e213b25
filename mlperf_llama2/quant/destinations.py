"""The simulate-mode destination modules: each wraps one source slot and fake-quantizes as its rule says.

One class per destination family of the config schema (yaml_config.DESTINATIONS). Weights are
quantized once at construction and frozen (`quant_and_freeze`); activations go through
`FakeQuantizer`s (dynamic or calibrated static). Where the schema's public description leaves a
meaning open, the choice is stated in the class docstring and in docs/quantization.md.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mlperf_llama2.quant.fake_quant import FakeQuantizer, Numerics
from mlperf_llama2.quant.yaml_config import Rule


def _quantizer(rule: Rule, role: str, numerics: Numerics, name: str) -> Optional[FakeQuantizer]:
    spec = rule.quantizer(role)
    return None if spec is None else FakeQuantizer(spec, numerics, f"{name}.{role}", rule.label)


def _maybe(q: Optional[FakeQuantizer], x: torch.Tensor) -> torch.Tensor:
    return x if q is None else q(x)


def frozen_weight(weight: torch.Tensor, rule: Rule, numerics: Numerics, name: str) -> torch.Tensor:
    """The rule's weights_quantizer applied once (identity when the rule has none)."""
    q = _quantizer(rule, "weights_quantizer", numerics, name)
    with torch.no_grad():
        return weight.detach() if q is None else q(weight.detach())


class LinearQuant(nn.Module):
    """nn.Linear with fake-quantized input (act_quantizer), frozen quantized weight, optional output."""

    def __init__(self, linear: nn.Linear, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(frozen_weight(linear.weight, rule, numerics, name), requires_grad=False)
        self.bias = linear.bias
        self.act_quantizer = _quantizer(rule, "act_quantizer", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maybe(self.quantizer_out, F.linear(_maybe(self.act_quantizer, x), self.weight, self.bias))


class QuantBinary(nn.Module):
    """QuantMatmul / QuantMatmulOutputQuant / QuantMul / QuantAdd: op(q1(a), q2(b)), then the output quantizer."""

    def __init__(self, op: nn.Module, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.op = op
        self.quantizer_in1 = _quantizer(rule, "quantizer_in1", numerics, name)
        self.quantizer_in2 = _quantizer(rule, "quantizer_in2", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = self.op(_maybe(self.quantizer_in1, a), _maybe(self.quantizer_in2, b))
        return _maybe(self.quantizer_out, out)


class QuantAddCommonScalePerToken(nn.Module):
    """Residual add whose two inputs share one scale: the range over both inputs, per the rule's dims."""

    def __init__(self, op: nn.Module, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.op = op
        self.quantizer = _quantizer(rule, "quantizer", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        lo_a, hi_a = q.batch_range(a)
        lo_b, hi_b = q.batch_range(b)
        lo, hi = torch.minimum(lo_a, lo_b), torch.maximum(hi_a, hi_b)
        if not q.spec.dynamic:
            if q.calibrating:
                q.observe(lo, hi)
                return _maybe(self.quantizer_out, self.op(a, b))
            lo, hi = q.quant_range(a)
        return _maybe(self.quantizer_out, self.op(q.apply(a, lo, hi), q.apply(b, lo, hi)))


class QuantAddSoftmaxMask(nn.Module):
    """scores + mask before the softmax: the scores are quantized; the additive mask (0 / most negative
    float) passes through, since quantizing it could only move the masked entries, never unmask them."""

    def __init__(self, op: nn.Module, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.op = op
        self.quantizer_in1 = _quantizer(rule, "quantizer_in1", numerics, name) or \
            _quantizer(rule, "quantizer", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _maybe(self.quantizer_out, self.op(_maybe(self.quantizer_in1, scores), mask))


class SingleInputQuantActivation(nn.Module):
    """An activation (SiLU) whose input is quantized (`quantizer` / `act_quantizer`), optional output."""

    def __init__(self, act: nn.Module, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.act = act
        self.quantizer = _quantizer(rule, "quantizer", numerics, name) or \
            _quantizer(rule, "act_quantizer", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maybe(self.quantizer_out, self.act(_maybe(self.quantizer, x)))


class QuantRMSNorm(nn.Module):
    """Llama RMSNorm with quantized input (act_quantizer) and frozen quantized weight (weights_quantizer)."""

    def __init__(self, norm: nn.Module, rule: Rule, numerics: Numerics, name: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(frozen_weight(norm.weight, rule, numerics, name), requires_grad=False)
        self.variance_epsilon = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        self.act_quantizer = _quantizer(rule, "act_quantizer", numerics, name)
        self.quantizer_out = _quantizer(rule, "quantizer_out", numerics, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _maybe(self.act_quantizer, x)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return _maybe(self.quantizer_out, self.weight * h.to(dtype))


DESTINATION_CLASSES = {
    "LinearQuant": LinearQuant,
    "QuantMatmul": QuantBinary,
    "QuantMatmulOutputQuant": QuantBinary,
    "QuantMul": QuantBinary,
    "QuantAdd": QuantBinary,
    "QuantAddCommonScalePerToken": QuantAddCommonScalePerToken,
    "QuantAddSoftmaxMask": QuantAddSoftmaxMask,
    "SingleInputQuantActivation": SingleInputQuantActivation,
    "QuantRMSNorm": QuantRMSNorm,
}
